"""The suite's units, their dependencies and fingerprints, planned stage by stage from the registry.

The first stage (tokenize) is planned from the config alone; the rest once its output exists, since the
shard count depends on how many sequences the corpus packs into.
"""
from __future__ import annotations

from tasks.capacity import suite_waves
from tasks.config import StagesConfig
from tasks.registry import STAGE_NAMES, STAGES
from tasks.stages import tokenize
from tasks.stages.extract import n_shards
from tasks.units import PlanContext, Planned, UnitSpec


def tokenize_units(cfg: StagesConfig) -> list[UnitSpec]:
    return tokenize.plan_units(cfg)


def downstream_units(ctx: PlanContext, first: list[UnitSpec]) -> Planned:
    """Every unit after the first stage's, keyed by stage in registry order."""
    planned: Planned = {STAGE_NAMES[0]: first}
    for stage in STAGES.values():
        if stage.plan is not None:
            planned[stage.name] = stage.plan(ctx, planned)
    del planned[STAGE_NAMES[0]]
    return planned


def plan_suite(cfg: StagesConfig, layers: list[int], model_name: str, n_train: int | None) -> Planned:
    """The whole plan: the first stage's units, and the rest once `n_train` (the tokenized train sequences)
    is known; the flow, `status` and tests all read this one plan."""
    first = tokenize_units(cfg)
    if n_train is None:
        return {STAGE_NAMES[0]: first}
    ctx = PlanContext(cfg=cfg, layers=layers, n_shards=n_shards(n_train, cfg.extract.seqs_per_shard),
                      model_name=model_name, waves=suite_waves(cfg, layers, n_train))
    return {STAGE_NAMES[0]: first, **downstream_units(ctx, first)}
