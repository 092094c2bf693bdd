"""Progress people watch: a bar per stage in the terminal (rich) and a progress artifact per stage in the
Prefect dashboard, both advanced as units settle (run, skipped, failed or blocked)."""
from __future__ import annotations

from collections import Counter
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tasks.registry import STAGE_NAMES
from tasks.units import Planned, UnitSpec


class RunProgress:
    def __init__(self) -> None:
        columns = (TextColumn("[bold]{task.fields[stage]:>9}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.description}"))
        self.bars = Progress(*columns, transient=False)
        self.rows: dict[str, TaskID] = {}
        self.artifacts: dict[str, UUID] = {}
        self.totals: Counter[str] = Counter()
        self.done: Counter[str] = Counter()
        self.failed: dict[str, list[str]] = {}

    def __enter__(self) -> "RunProgress":
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def add(self, plan: Planned) -> None:
        """Bars for the stages of a newly planned phase, in registry order."""
        for stage in STAGE_NAMES:
            if stage in plan and stage not in self.rows:
                self.totals[stage] = len(plan[stage])
                self.rows[stage] = self.bars.add_task("", total=self.totals[stage], stage=stage, start=False)
                self.artifacts[stage] = create_progress_artifact(
                    0.0, key=f"scopeflow-{stage}-progress", description=f"{stage}: units settled in this run")

    def started(self, spec: UnitSpec) -> None:
        self.bars.start_task(self.rows[spec.stage])

    def settled(self, spec: UnitSpec, outcome: str) -> None:
        stage = spec.stage
        self.done[stage] += 1
        if outcome in ("failed", "interrupted"):
            self.failed.setdefault(stage, []).append(spec.unit)
        bad = self.failed.get(stage)
        self.bars.start_task(self.rows[stage])
        self.bars.update(self.rows[stage], completed=self.done[stage],
                         description=f"[red]{len(bad)} failed: {', '.join(bad[:3])}" if bad else "")
        update_progress_artifact(self.artifacts[stage], 100.0 * self.done[stage] / max(1, self.totals[stage]))
