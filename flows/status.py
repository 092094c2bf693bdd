"""`scopeflow status`: the ledger read against the current plan, without Prefect or Ray."""
from __future__ import annotations

from flows.config import SuiteConfig
from flows.prepare import prepare_suite
from storage.ledger import Ledger
from tasks.plan import plan_suite
from tasks.registry import STAGE_NAMES
from tasks.stages.tokenize import n_train_seqs


def stage_status(cfg: SuiteConfig, config_path: str) -> list[dict]:
    prepared = prepare_suite(cfg, config_path, write=False)
    root = prepared.root
    ledger = Ledger(root)
    plan = plan_suite(cfg, prepared.layers, prepared.model_name, None)
    first = plan[STAGE_NAMES[0]][0]
    if ledger.is_complete(first.stage, first.unit, first.fingerprint):
        plan = plan_suite(cfg, prepared.layers, prepared.model_name, n_train_seqs(root))
    rows = []
    for stage in STAGE_NAMES:
        specs = plan.get(stage)
        counts = {"complete": 0, "failed": 0, "running": 0, "pending": 0}
        durations, errors = [], []
        for spec in specs or []:
            rec = ledger.get(spec.stage, spec.unit)
            if rec is None or rec.fingerprint != spec.fingerprint:
                counts["pending"] += 1
                continue
            if rec.status == "complete" and not ledger.is_complete(spec.stage, spec.unit, spec.fingerprint):
                counts["pending"] += 1  # outputs deleted since
                continue
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
