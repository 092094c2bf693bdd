"""Whether a unit runs now: the build-system rule over the ledger, with no Prefect or Ray in it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from storage.ledger import Ledger
from tasks.units import UnitSpec

Decision = Literal["run", "skip", "block"]


@dataclass
class RunState:
    """What happened so far in this run: a unit whose input re-ran re-runs too; one whose input failed
    (or was itself blocked) does not run at all. A restored input (a freed unit re-created bit for bit)
    is in none of these sets, so it forces nothing downstream."""
    ran: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    forced: set[str] = field(default_factory=set)
    interrupted: set[str] = field(default_factory=set)


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


def decide(spec: UnitSpec, ledger: Ledger, state: RunState, selectors: list[Selector]) -> Decision:
    """Once every unit `spec` reads has settled: block it behind a failure, run it (forced, an input ran,
    or no complete record with its fingerprint), or skip it. Records the decision in `state`."""
    if any(d in state.failed or d in state.blocked or d in state.interrupted for d in spec.deps):
        state.blocked.add(spec.key)
        return "block"
    forced = any(s.matches(spec) for s in selectors)
    if forced:
        state.forced.add(spec.key)
    if (forced or any(d in state.ran for d in spec.deps)
            or not ledger.is_complete(spec.stage, spec.unit, spec.fingerprint)):
        return "run"
    state.skipped.add(spec.key)
    return "skip"
