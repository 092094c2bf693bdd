"""One Prefect flow per stage: its pending units mapped onto Ray tasks.

Prefect retries cover a unit that raised; Ray's max_retries covers a worker that died (OOM, SIGKILL), which
is not a Python exception. A unit that still fails is recorded `failed` and its siblings go on.
"""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows.config import SuiteConfig
from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.execute import run_unit
from tasks.units import UnitSpec


@task(name="unit", cache_policy=NO_CACHE, persist_result=False)
def unit_task(cfg: SuiteConfig, spec: UnitSpec, root: StorageRoot) -> dict:
    # Prefect passes paths and specs here, never arrays: the unit reads its data itself.
    record = run_unit(cfg, spec, root)
    return {"unit": spec.unit, "duration_s": record.duration_s, "metrics": record.metrics}


@flow(name="stage", flow_run_name="{stage}", validate_parameters=False, persist_result=False)
def stage_flow(stage: str, cfg: SuiteConfig, specs: list[UnitSpec], root: StorageRoot) -> dict[str, str]:
    """Runs every unit to the end, then fails (in the dashboard too) if any unit failed."""
    orch = cfg.orchestration
    cpus, gpus = cfg.unit_resources(stage)
    options = {"num_cpus": cpus, "max_retries": orch.worker_retries}
    if gpus:
        options["num_gpus"] = gpus
    runnable = unit_task.with_options(retries=orch.task_retries, retry_delay_seconds=orch.retry_delay_seconds)
    outcome: dict[str, str] = {}
    with remote_options(**options):
        futures = {runnable.with_options(task_run_name=f"{stage}:{spec.unit}").submit(cfg, spec, root): spec
                   for spec in specs}
    columns = (TextColumn(f"[bold]{stage:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, transient=False) as progress:
        bar = progress.add_task("", total=len(specs))
        for fut in as_completed(list(futures)):
            spec = futures[fut]
            fut.wait()
            ok = fut.state.is_completed()
            outcome[spec.key] = "complete" if ok else "failed"
            progress.update(bar, advance=1, description="" if ok else f"[red]{spec.unit} failed")
    failed = [k for k, v in outcome.items() if v == "failed"]
    if failed:
        raise RuntimeError(f"{stage}: {len(failed)} of {len(specs)} units failed: {', '.join(failed)}")
    return outcome


def run_stage_flow(stage: str, cfg: SuiteConfig, specs: list[UnitSpec], root: StorageRoot) -> dict[str, str]:
    """Run the stage flow, then read each unit's outcome from the ledger, the source of truth (a worker
    that died leaves no Python exception behind, only a record that never turned complete)."""
    if not specs:
        return {}
    runner = RayTaskRunner(address=cfg.orchestration.ray_address)
    stage_flow.with_options(task_runner=runner)(stage, cfg, specs, root, return_state=True)
    ledger = Ledger(root)
    return {s.key: "complete" if ledger.is_complete(s.stage, s.unit, s.fingerprint) else "failed" for s in specs}
