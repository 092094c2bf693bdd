"""The suite flow: every unit of the plan submitted as soon as the units it reads are settled (a graph of
units, not stage barriers), as Prefect tasks on Ray; the ledger decides which units run."""
from __future__ import annotations

import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.config import DEFAULT_CONFIG, SuiteConfig, load_suite_config
from flows.prepare import prepare_suite
from flows.progress import RunProgress
from flows.ray_runner import ShapedRayTaskRunner
from flows.units import PrefectRayExecutor, ray_for_run
from storage.layout import REPORT_INDEX
from storage.lease import RootLease
from storage.ledger import Ledger
from tasks.plan import plan_suite
from tasks.registry import STAGE_NAMES, get_stage, upstream
from tasks.reporting import TABLE_COLUMNS, format_table_rows, sorted_rows
from tasks.runner import Runner, forget_runner, register_runner, runner_for
from tasks.schedule import Selector
from tasks.stages.report import SUITE_UNIT, collect_metrics
from tasks.stages.tokenize import n_train_seqs
from tasks.units import Planned


def rerun_command(config_path: str, key: str) -> str:
    stage, unit = key.split(":", 1)
    cmd = f"scopeflow rerun {config_path} --stage {stage}"
    if "/layer_" in unit:
        site, layer = unit.split("/layer_")
        cmd += f" --site {site} --layer {layer}"
    else:
        wave, _, shard = unit.rpartition("/")
        if wave.startswith("wave_"):
            cmd += f" --wave {int(wave.removeprefix('wave_'))}"
        if shard.startswith("shard_"):
            cmd += f" --shard {int(shard.removeprefix('shard_'))}"
    return cmd


def failure_line(config_path: str, key: str, ledger: Ledger) -> str:
    """A failed unit, its cause in one line (from the ledger), and what to do: fix the input and run again
    for an input error; re-run the unit for anything else; and when it read a corrupt chunk, re-run the
    unit that wrote that chunk (re-running the reader would only read the same bad bytes again)."""
    stage, unit = key.split(":", 1)
    rec = ledger.get(stage, unit)
    err = rec.error if rec else None
    cause = f"{err.message.splitlines()[0] if err.message else err.type}" if err else "its worker died"
    if err and err.type == "CorruptChunkError" and "path" in err.facts:
        producer = ledger.producer_of(err.facts["path"], upstream(stage))
        if producer:
            pkey = f"{producer.stage}:{producer.unit}"
            return (f"  {key}   read a corrupt chunk written by {pkey} ({cause})\n"
                    f"      repair: {rerun_command(config_path, pkey)}")
    if err and err.kind == "input":
        return f"  {key}   {cause}\n      fix that input, then: scopeflow run {config_path}"
    return f"  {key}   {cause}\n      re-run: {rerun_command(config_path, key)}"


@flow(name="units", flow_run_name="units", validate_parameters=False, persist_result=False)
def units_flow(cfg: SuiteConfig, prepared: Any, run_id: str) -> Planned:
    """The first stage, then (once its output says how many shards there are) every later unit. Its task
    runner is a (Shaped)RayTaskRunner on the Ray instance the suite flow started or joined. (`prepared` is a
    PreparedSuite, typed Any so Prefect builds no parameter schema for it.)"""
    runner = runner_for(run_id)  # not a parameter: Prefect ships parameters to every worker
    logger = get_run_logger()
    runner.on_note = logger.info
    with RunProgress() as progress:
        runner.on_settled, runner.on_submitted = progress.settled, progress.started
        plan = plan_suite(cfg, prepared.layers, prepared.model_name, None)
        progress.add(plan)
        runner.run(plan)
        if runner.state.failed:
            return plan
        plan = plan_suite(cfg, prepared.layers, prepared.model_name, n_train_seqs(prepared.root))
        first = {s.key: s for s in plan[STAGE_NAMES[0]]}
        rest = {name: specs for name, specs in plan.items() if name != STAGE_NAMES[0]}
        progress.add(rest)
        runner.run(rest, all_units=first)
    return plan


@flow(name="scopeflow-suite", flow_run_name="suite:{config_path}", validate_parameters=True, persist_result=False)
def suite_flow(config_path: str = DEFAULT_CONFIG, rerun: list[dict] | None = None) -> dict:
    """`rerun` holds selectors {stage, site?, layer?, wave?, shard?}: those units run whatever the ledger says,
    and so do the units that depend on them. With storage.budget_bytes the (site, layer) groups run in waves
    whose activations are freed once their SAEs are evaluated."""
    cfg = load_suite_config(config_path)
    prepared = prepare_suite(cfg, config_path)
    root = prepared.root
    ledger = Ledger(root)
    run_id = uuid.uuid4().hex[:12]
    runner = Runner(ledger, PrefectRayExecutor(cfg, root, run_id), selectors=[Selector(**s) for s in (rerun or [])],
                    free_waves=cfg.storage.budget_bytes is not None and not cfg.storage.keep_activations)
    lease = RootLease.acquire(root, run_id).start_heartbeat(on_lost=lambda _: runner.stop())
    if lease.notice:
        get_run_logger().warning(lease.notice)
    register_runner(run_id, runner)
    try:
        with ray_for_run(cfg.orchestration):
            task_runner = ShapedRayTaskRunner(address=cfg.orchestration.ray_address)
            plan = units_flow.with_options(task_runner=task_runner)(cfg, prepared, run_id)
    finally:
        forget_runner(run_id)
        lease.release()
    state = runner.state
    summary = _stage_summary(plan, state)
    result = {"stages": summary, "root": root.url, "ran": sorted(state.ran), "failed": sorted(state.failed),
              "blocked": sorted(state.blocked), "report": root.path(REPORT_INDEX)}
    _publish_artifacts(result)
    if "evaluate" in plan and f"report:{SUITE_UNIT}" not in state.failed | state.blocked:
        _publish_metrics(root, [(u.site, u.layer) for u in plan["evaluate"]])
    if state.failed:
        lines = [failure_line(config_path, k, ledger) for k in sorted(state.failed)]
        raise RuntimeError(f"{len(state.failed)} unit(s) failed ({len(state.blocked)} blocked behind them):\n"
                           + "\n".join(lines))
    return result


def _stage_summary(plan: Planned, state) -> dict[str, dict[str, int]]:
    """Per stage: units planned, and how many ran, were skipped, failed or were blocked in this run."""
    return {stage: {"units": len(specs), "ran": sum(s.key in state.ran or s.key in state.failed for s in specs),
                    "skipped": sum(s.key in state.skipped for s in specs),
                    "failed": sum(s.key in state.failed for s in specs),
                    "blocked": sum(s.key in state.blocked for s in specs)}
            for stage, specs in plan.items()}


def _publish_artifacts(result: dict) -> None:
    """What the dashboard shows for a run: a table of stages and, once evaluated, the suite's metrics."""
    rows = [{"stage": s, **c} for s, c in result["stages"].items()]
    create_table_artifact(rows, key="scopeflow-stages", description="units per stage in this run")
    lines = [f"**storage root** `{result['root']}`", f"**report** `{result['report']}`"]
    if result["failed"]:
        lines.append("**failed units**: " + ", ".join(f"`{k}`" for k in result["failed"]))
    create_markdown_artifact("\n\n".join(lines), key="scopeflow-run", description="scopeflow run summary")


def _publish_metrics(root, keys: list[tuple[str, int]]) -> None:
    rows = [dict(zip(TABLE_COLUMNS, r)) for r in format_table_rows(sorted_rows(collect_metrics(root, keys)))]
    create_table_artifact(rows, key="scopeflow-metrics", description="every SAE of the suite, on held-out tokens")


@flow(name="scopeflow-rerun", flow_run_name="rerun:{stage}:{site}:{layer}", persist_result=False)
def rerun_flow(config_path: str = DEFAULT_CONFIG, stage: str = "train", site: str | None = None,
               layer: int | None = None, shard: int | None = None, wave: int | None = None) -> dict:
    """Force one stage's units (optionally one site and/or layer, or one storage wave's, or one extract shard)
    and everything downstream of them."""
    get_stage(stage)
    return suite_flow(config_path, rerun=[{"stage": stage, "site": site, "layer": layer, "wave": wave, "shard": shard}])
