"""What a unit is: its spec (what to compute, from what, under which fingerprint) and its result.

Specs are small and typed because Prefect and Ray pass them to workers as task arguments; a unit reads its
data itself from the storage root. A unit's fingerprint hashes the config fields that shape its output plus
its inputs' fingerprints, like a build system (docs/architecture.md, "The ledger and fingerprints").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from pydantic import BaseModel, Field

from storage.fingerprint import fingerprint
from tasks.config import RUNTIME_ONLY, StagesConfig

FORMAT_VERSION = 2  # bump when a stage's output format changes, so old outputs are not trusted

SiteLayer = tuple[str, int]


class UnitSpec(BaseModel):
    stage: str
    unit: str
    fingerprint: str
    site: str | None = None
    layer: int | None = None
    shard: int | None = None
    wave: int = Field(0, description="the storage wave it belongs to (always 0 without storage.budget_bytes)")
    deps: list[str] = Field(default_factory=list, description="keys 'stage:unit' of the units it reads")
    groups: list[SiteLayer] = Field(default_factory=list,
                                    description="the (site, layer) groups it covers: an extract unit's wave, "
                                                "the report's evaluated groups")
    n_shards: int | None = Field(None, description="a shuffle unit: how many extract shards it reads")
    model_name: str | None = Field(None, description="a train unit: the name SAELens knows the model by")

    @property
    def key(self) -> str:
        return f"{self.stage}:{self.unit}"


@dataclass(frozen=True)
class UnitResult:
    """What a stage function hands back once every output is durably written: the outputs the ledger
    records (paths relative to the root) and small metrics for people."""

    outputs: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanContext:
    """What planning the units after tokenize needs: known only once the tokens exist."""

    cfg: StagesConfig
    layers: list[int]
    n_shards: int
    model_name: str
    #: the storage waves: a partition of the (site, layer) groups (tasks/capacity.py)
    waves: list[list[SiteLayer]]

    def groups(self) -> Iterator[tuple[str, int, int]]:
        """(site, layer, wave) for every group, sites outermost: the order of the per-group units."""
        wave_of = {g: w for w, groups in enumerate(self.waves) for g in groups}
        for site in self.cfg.sites:
            for layer in self.layers:
                yield site, layer, wave_of[(site, layer)]


Planned = dict[str, list[UnitSpec]]


def units_on_trained_saes(ctx: PlanContext, planned: Planned, stage: str, *settings: Any) -> list[UnitSpec]:
    """One unit of `stage` per (site, layer), reading every SAE its train unit wrote and the held-out tokens:
    what evaluate and inspect both are. `settings`: what else shapes the unit's outputs."""
    tokenize = planned["tokenize"][0]
    train = {(u.site, u.layer): u for u in planned["train"]}
    units = []
    for site, layer, w in ctx.groups():
        tr = train[(site, layer)]
        units.append(UnitSpec(stage=stage, unit=tr.unit, site=site, layer=layer, wave=w, deps=[tr.key, tokenize.key],
                              fingerprint=fingerprint(stage, FORMAT_VERSION, tr.fingerprint, tokenize.fingerprint,
                                                      *settings)))
    return units


def suite_fingerprint(cfg: StagesConfig) -> str:
    """The fingerprint of what the suite computes, recorded in suite.json and the report: the stages'
    settings only, so editing how it is orchestrated (retries, resources, `RUNTIME_ONLY`) leaves it alone."""
    stage_fields = set(StagesConfig.model_fields) - {"name"}
    return fingerprint(FORMAT_VERSION, cfg.model_dump(mode="json", include=stage_fields, exclude=RUNTIME_ONLY))
