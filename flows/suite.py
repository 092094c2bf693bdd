"""The suite flow: tokenize -> extract -> shuffle -> train -> evaluate -> report, each a stage flow whose
units run as Ray tasks; the ledger decides which units run."""
from __future__ import annotations

import ray
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.config import DEFAULT_CONFIG, load_suite_config
from flows.prepare import prepare_suite
from flows.schedule import RunState, Selector, select
from flows.stages import run_stage_flow
from infra.ray_local import init_ray
from storage.layout import REPORT_INDEX
from storage.ledger import Ledger
from tasks.capacity import describe_groups
from tasks.plan import plan_suite
from tasks.registry import STAGE_NAMES, STAGES, get_stage, upstream
from tasks.reporting import TABLE_COLUMNS, format_table_rows, sorted_rows
from tasks.stages.report import SUITE_UNIT, collect_metrics
from tasks.stages.tokenize import n_train_seqs
from tasks.units import UnitSpec

#: the stages a storage wave runs, in order; the stages before them run once first, those after once last
WAVE_STAGES = tuple(name for name in STAGE_NAMES if STAGES[name].per_wave)


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
    """A failed unit and the command that repairs it: itself, or, when it read a corrupt chunk, the unit that
    wrote that chunk (re-running the reader would only read the same bad bytes again)."""
    stage, unit = key.split(":", 1)
    rec = ledger.get(stage, unit)
    if rec and rec.error and rec.error.type == "CorruptChunkError" and "path" in rec.error.facts:
        producer = ledger.producer_of(rec.error.facts["path"], upstream(stage))
        if producer:
            pkey = f"{producer.stage}:{producer.unit}"
            return (f"  {key}   read a corrupt chunk written by {pkey} ({rec.error.message})\n"
                    f"      repair: {rerun_command(config_path, pkey)}")
    return f"  {key}   re-run: {rerun_command(config_path, key)}"


def _freed_inputs(specs: list[UnitSpec], by_key: dict[str, UnitSpec], ledger: Ledger) -> list[UnitSpec]:
    """Freed units whose outputs these specs read (transitively): they run again first, as a restore that
    does not count as a change (same fingerprint, same bytes), so nothing else re-runs because of it."""
    need: dict[str, UnitSpec] = {}
    stack = [d for s in specs for d in s.deps]
    while stack:
        key = stack.pop()
        spec = by_key.get(key)
        if key in need or spec is None or not ledger.is_freed(spec.stage, spec.unit, spec.fingerprint):
            continue
        need[key] = spec
        stack.extend(spec.deps)
    return sorted(need.values(), key=lambda s: STAGE_NAMES.index(s.stage))


@flow(name="scopeflow-suite", flow_run_name="suite:{config_path}", validate_parameters=True, persist_result=False)
def suite_flow(config_path: str = DEFAULT_CONFIG, rerun: list[dict] | None = None) -> dict:
    """`rerun` holds selectors {stage, site?, layer?, wave?, shard?}: those units run whatever the ledger says, and so
    do the units that depend on them. With storage.budget_bytes the groups run wave by wave (extract,
    shuffle, train, evaluate), and each wave's activations are freed once its SAEs are evaluated."""
    logger = get_run_logger()
    cfg = load_suite_config(config_path)
    prepared = prepare_suite(cfg, config_path)
    root = prepared.root
    selectors = [Selector(**s) for s in (rerun or [])]
    ledger = Ledger(root)
    state = RunState()
    summary: dict[str, dict[str, int]] = {}
    plan = plan_suite(cfg, prepared.layers, prepared.model_name, None)
    by_key: dict[str, UnitSpec] = {}

    def run(stage: str, specs: list[UnitSpec]) -> None:
        pending = select(specs, ledger, state, selectors)
        restore = _freed_inputs(pending, by_key, ledger)
        for up in STAGE_NAMES:
            batch = [s for s in restore if s.stage == up]
            if batch:
                logger.info("%s: restoring %d freed unit(s) that %s needs", up, len(batch), stage)
                bad = [k for k, v in run_stage_flow(up, cfg, batch, root).items() if v == "failed"]
                state.failed.update(bad)
        outcome = run_stage_flow(stage, cfg, pending, root)
        state.ran.update(k for k, v in outcome.items() if v == "complete")
        state.failed.update(k for k, v in outcome.items() if v == "failed")
        row = summary.setdefault(stage, {"units": 0, "ran": 0, "skipped": 0, "failed": 0, "blocked": 0})
        row["units"] += len(specs)
        row["ran"] += len(pending)
        row["skipped"] += sum(s.key in state.skipped for s in specs)
        row["failed"] += sum(v == "failed" for v in outcome.values())
        row["blocked"] += sum(s.key in state.blocked for s in specs)
        logger.info("%s: %s", stage, row)

    first, *rest = STAGE_NAMES
    started_ray = init_ray(cfg.orchestration)
    try:
        run(first, plan[first])
        if not state.failed:
            plan = plan_suite(cfg, prepared.layers, prepared.model_name, n_train_seqs(root))
            by_key = {s.key: s for specs in plan.values() for s in specs}
            waves = sorted({s.wave for name in WAVE_STAGES for s in plan[name]})
            for w in waves:
                if len(waves) > 1:
                    groups = [(s.site, s.layer) for s in plan[WAVE_STAGES[-1]] if s.wave == w]
                    logger.info("wave %d of %d: %s", w + 1, len(waves), describe_groups(groups))
                for name in WAVE_STAGES:
                    run(name, [s for s in plan[name] if s.wave == w])
                if cfg.storage.budget_bytes is not None and not cfg.storage.keep_activations:
                    _free_wave(plan, w, ledger, logger)
            for name in rest:
                if name not in WAVE_STAGES:
                    run(name, plan[name])
    finally:
        if started_ray:
            ray.shutdown()
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


def _free_wave(plan: dict[str, list[UnitSpec]], wave: int, ledger: Ledger, logger) -> None:
    """Delete a wave's freeable outputs (its activations) once every unit of the wave that keeps its outputs
    is complete; a wave with a failed unit keeps them, so re-running it needs no re-extraction."""
    kept = [name for name in WAVE_STAGES if not STAGES[name].freed_by_wave]
    done = all(ledger.is_complete(s.stage, s.unit, s.fingerprint)
               for name in kept for s in plan[name] if s.wave == wave)
    if not done:
        logger.warning("wave %d: not every SAE is evaluated; its activations are kept", wave + 1)
        return
    for name in reversed(WAVE_STAGES):
        if STAGES[name].freed_by_wave:
            for s in plan[name]:
                if s.wave == wave:
                    ledger.free(s.stage, s.unit)
    logger.info("wave %d: activations freed", wave + 1)


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
