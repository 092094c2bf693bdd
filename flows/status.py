"""`scopeflow status`: the ledger read against the current plan, without Prefect or Ray."""
from __future__ import annotations

from flows.config import SuiteConfig
from flows.prepare import prepare_suite
from storage.lease import current as current_lease
from storage.ledger import Ledger
from tasks.plan import plan_suite
from tasks.registry import STAGE_NAMES
from tasks.stages.tokenize import n_train_seqs


def lease_line(root) -> str:
    """Who holds the root now, in one line."""
    holder = current_lease(root)
    return "lease: free" if holder is None else f"lease: {holder.summary()}"


def stage_status(cfg: SuiteConfig, config_path: str) -> list[dict]:
    """Per stage: units complete, failed, running, stale (`running` records of a run that no longer holds
    the root), pending (never run, changed, interrupted, or outputs deleted), and durations."""
    prepared = prepare_suite(cfg, config_path, write=False)
    root = prepared.root
    ledger = Ledger(root)
    plan = plan_suite(cfg, prepared.layers, prepared.model_name, None)
    first = plan[STAGE_NAMES[0]][0]
    if ledger.is_complete(first.stage, first.unit, first.fingerprint):
        plan = plan_suite(cfg, prepared.layers, prepared.model_name, n_train_seqs(root))
    holder = current_lease(root)
    live_run = holder.run_id if holder is not None and not holder.is_stale() else None
    rows = []
    for stage in STAGE_NAMES:
        specs = plan.get(stage)
        counts = {"complete": 0, "failed": 0, "running": 0, "stale": 0, "pending": 0}
        durations, errors = [], []
        for spec in specs or []:
            rec = ledger.get(spec.stage, spec.unit)
            if rec is None or rec.fingerprint != spec.fingerprint:
                counts["pending"] += 1
                continue
            if rec.status == "complete" and not ledger.is_complete(spec.stage, spec.unit, spec.fingerprint):
                counts["pending"] += 1  # outputs deleted since
                continue
            if rec.status == "running" and (live_run is None or rec.run_id != live_run):
                counts["stale"] += 1  # its run no longer holds the root: nothing runs it
            elif rec.status == "interrupted":
                counts["pending"] += 1
            else:
                counts[rec.status] += 1
            if rec.duration_s is not None and rec.status == "complete":
                durations.append(rec.duration_s)
            if rec.status == "failed" and rec.error:
                errors.append((spec.unit, f"{rec.error.type}: {rec.error.message.splitlines()[0] if rec.error.message else ''}"))
        rows.append({"stage": stage, "units": len(specs) if specs is not None else "?", **counts,
                     "total_s": sum(durations) if durations else None,
                     "mean_s": sum(durations) / len(durations) if durations else None,
                     "max_s": max(durations) if durations else None, "errors": errors})
    return rows
