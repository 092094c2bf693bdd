"""The suite flow: tokenize -> extract -> shuffle -> train -> evaluate -> report, each a stage flow whose
units run as Ray tasks; the ledger decides which units run."""
from __future__ import annotations

import zarr
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.config import DEFAULT_CONFIG, load_suite_config
from flows.prepare import prepare_suite
from flows.schedule import RunState, Selector, select
from flows.stages import run_stage_flow
from infra.ray_local import init_ray
from storage.ledger import Ledger
from tasks.extract import n_shards
from tasks.plan import STAGES, downstream_units, tokenize_units
from tasks.tokenize import TOKENS_TRAIN


def rerun_command(config_path: str, key: str) -> str:
    stage, unit = key.split(":", 1)
    cmd = f"scopeflow rerun {config_path} --stage {stage}"
    if "/layer_" in unit:
        site, layer = unit.split("/layer_")
        cmd += f" --site {site} --layer {layer}"
    return cmd


@flow(name="scopeflow-suite", flow_run_name="suite:{config_path}", validate_parameters=True, persist_result=False)
def suite_flow(config_path: str = DEFAULT_CONFIG, rerun: list[dict] | None = None) -> dict:
    """`rerun` holds selectors {stage, site?, layer?}: those units run whatever the ledger says, and so do
    the units that depend on them."""
    logger = get_run_logger()
    cfg = load_suite_config(config_path)
    prepared = prepare_suite(cfg, config_path)
    root = prepared.root
    selectors = [Selector(**s) for s in (rerun or [])]
    ledger = Ledger(root)
    state = RunState()
    summary: dict[str, dict[str, int]] = {}
    started_ray = init_ray(cfg.orchestration)
    try:
        plan = {"tokenize": tokenize_units(cfg)}
        for stage in STAGES:
            if stage == "extract":
                if state.failed:
                    break
                n_train = zarr.open_array(store=root.zarr_store(TOKENS_TRAIN, read_only=True), mode="r").shape[0]
                plan.update(downstream_units(cfg, prepared.layers, n_shards(n_train, cfg.extract.seqs_per_shard),
                                             prepared.model_name, plan["tokenize"][0]))
            specs = plan[stage]
            pending = select(specs, ledger, state, selectors)
            outcome = run_stage_flow(stage, cfg, pending, root)
            state.ran.update(k for k, v in outcome.items() if v == "complete")
            state.failed.update(k for k, v in outcome.items() if v == "failed")
            summary[stage] = {"units": len(specs), "ran": len(pending),
                              "skipped": sum(k in state.skipped for k in (s.key for s in specs)),
                              "failed": sum(v == "failed" for v in outcome.values()),
                              "blocked": sum(s.key in state.blocked for s in specs)}
            logger.info("%s: %s", stage, summary[stage])
    finally:
        if started_ray:
            import ray
            ray.shutdown()
    result = {"stages": summary, "root": root.url, "ran": sorted(state.ran), "failed": sorted(state.failed),
              "blocked": sorted(state.blocked), "report": root.path("report/index.html")}
    _publish_artifacts(result)
    if "evaluate" in plan and "report:suite" not in state.failed | state.blocked:
        _publish_metrics(root, [(u.site, u.layer) for u in plan["evaluate"]])
    if state.failed:
        lines = [f"  {k}   re-run: {rerun_command(config_path, k)}" for k in sorted(state.failed)]
        raise RuntimeError(f"{len(state.failed)} unit(s) failed ({len(state.blocked)} blocked behind them):\n"
                           + "\n".join(lines))
    return result


def _publish_artifacts(result: dict) -> None:
    """What the dashboard shows for a run: a table of stages and, once evaluated, the suite's metrics."""
    rows = [{"stage": s, **c} for s, c in result["stages"].items()]
    create_table_artifact(rows, key="scopeflow-stages", description="units per stage in this run")
    lines = [f"**storage root** `{result['root']}`", f"**report** `{result['report']}`"]
    if result["failed"]:
        lines.append("**failed units**: " + ", ".join(f"`{k}`" for k in result["failed"]))
    create_markdown_artifact("\n\n".join(lines), key="scopeflow-run", description="scopeflow run summary")


def _publish_metrics(root, keys: list[tuple[str, int]]) -> None:
    from tasks.report import collect_metrics
    from tasks.report_render import TABLE_COLUMNS, format_table_rows, sorted_rows

    rows = [dict(zip(TABLE_COLUMNS, r)) for r in format_table_rows(sorted_rows(collect_metrics(root, keys)))]
    create_table_artifact(rows, key="scopeflow-metrics", description="every SAE of the suite, on held-out tokens")


@flow(name="scopeflow-rerun", flow_run_name="rerun:{stage}:{site}:{layer}", persist_result=False)
def rerun_flow(config_path: str = DEFAULT_CONFIG, stage: str = "train", site: str | None = None,
               layer: int | None = None) -> dict:
    """Force one stage's units (optionally one site and/or layer) and everything downstream of them."""
    if stage not in STAGES:
        raise ValueError(f"--stage: unknown stage {stage!r} (one of {', '.join(STAGES)})")
    return suite_flow(config_path, rerun=[{"stage": stage, "site": site, "layer": layer}])
