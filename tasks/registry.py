"""The stages, declared once: name, unit function, planner, what its units read, default Ray resources,
and how storage waves treat it. Every other place (the plan, the runner, the flows, status, the CLI, tests)
reads this table, so a new stage is one module in tasks/stages/ plus one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.stages import evaluate, extract, inspect, report, shuffle, tokenize, train
from tasks.units import PlanContext, Planned, UnitResult, UnitSpec


@dataclass(frozen=True)
class Stage:
    name: str
    #: runs one unit; called inside a Ray worker, or directly by tests
    run: Callable[[StagesConfig, UnitSpec, StorageRoot], UnitResult]
    #: this stage's units, given the plan context and the units of the stages before it; None for the first
    #: stage, which is planned from the config alone because the later ones need its output (the shard count)
    plan: Callable[[PlanContext, Planned], list[UnitSpec]] | None
    #: the stages whose outputs its units read
    reads: tuple[str, ...] = ()
    #: under a storage budget the suite runs these wave by wave (tasks/capacity.py)
    per_wave: bool = False
    #: a wave's outputs of this stage are deleted once the wave's SAEs are evaluated
    freed_by_wave: bool = False
    #: runs on an accelerator where the cluster has one (`orchestration.gpus_per_unit` asks for it)
    uses_gpu: bool = False
    #: Ray resources per unit unless `orchestration.cpus_per_unit` / `gpus_per_unit` say otherwise
    cpus: float = 1.0
    gpus: float = 0.0
    #: environment variables of the Ray workers that run its units (their runtime environment), from the
    #: config; an empty one leaves its units on the run's own workers
    env: Callable[[StagesConfig], dict[str, str]] | None = None


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("tokenize", tokenize.run_unit, None),
    Stage("extract", extract.run_unit, extract.plan_units, reads=("tokenize",), per_wave=True, freed_by_wave=True,
          uses_gpu=True),
    Stage("shuffle", shuffle.run_unit, shuffle.plan_units, reads=("extract",), per_wave=True, freed_by_wave=True),
    Stage("train", train.run_unit, train.plan_units, reads=("shuffle",), per_wave=True, uses_gpu=True,
          env=train.worker_env),
    Stage("evaluate", evaluate.run_unit, evaluate.plan_units, reads=("train", "tokenize"), per_wave=True,
          uses_gpu=True),
    # reads no activations, so a storage wave is freed without waiting for it
    Stage("inspect", inspect.run_unit, inspect.plan_units, reads=("train", "tokenize"), uses_gpu=True),
    Stage("report", report.run_unit, report.plan_units, reads=("evaluate", "inspect")),
)}
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)


def get_stage(name: str) -> Stage:
    """The stage of that name; an unknown name is an error listing the stages."""
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r} (one of {', '.join(STAGE_NAMES)})") from None


def upstream(name: str) -> tuple[str, ...]:
    """Every stage whose outputs a unit of `name` reads, directly or through others, in registry order."""
    seen: set[str] = set()
    stack = list(get_stage(name).reads)
    while stack:
        s = stack.pop()
        if s not in seen:
            seen.add(s)
            stack.extend(STAGES[s].reads)
    return tuple(s for s in STAGE_NAMES if s in seen)
