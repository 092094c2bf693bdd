"""Which units of a stage run now: the build-system rule over the ledger, with no Prefect or Ray in it."""
from __future__ import annotations

from dataclasses import dataclass, field

from storage.ledger import Ledger
from tasks.plan import UnitSpec


@dataclass
class RunState:
    """What happened so far in this run: a unit whose input re-ran re-runs too; one whose input failed
    (or was itself blocked) does not run at all."""
    ran: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    forced: set[str] = field(default_factory=set)


@dataclass
class Selector:
    """`scopeflow rerun --stage S [--site X] [--layer L] [--wave W] [--shard N]`: units to run whatever the
    ledger says."""
    stage: str
    site: str | None = None
    layer: int | None = None
    wave: int | None = None
    shard: int | None = None

    def matches(self, spec: UnitSpec) -> bool:
        return (spec.stage == self.stage and (self.site is None or spec.site in (None, self.site))
                and (self.layer is None or spec.layer in (None, self.layer))
                and (self.wave is None or spec.wave == self.wave)
                and (self.shard is None or spec.shard in (None, self.shard)))


def select(specs: list[UnitSpec], ledger: Ledger, state: RunState, selectors: list[Selector]) -> list[UnitSpec]:
    to_run = []
    for spec in specs:
        if any(d in state.failed or d in state.blocked for d in spec.deps):
            state.blocked.add(spec.key)
            continue
        forced = any(s.matches(spec) for s in selectors)
        if forced:
            state.forced.add(spec.key)
        if (forced or any(d in state.ran for d in spec.deps)
                or not ledger.is_complete(spec.stage, spec.unit, spec.fingerprint)):
            to_run.append(spec)
        else:
            state.skipped.add(spec.key)
    return to_run
