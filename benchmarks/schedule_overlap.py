"""How well a run's units overlap, from its ledger alone: how many units of a stage started before the last
unit of the stage it reads ended, and the span of the run against unit-seconds / workers (1.0 = the
workers were never idle).

    .venv/bin/python benchmarks/schedule_overlap.py runs/tiny [--workers 2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.registry import STAGE_NAMES, STAGES


def overlap(root: StorageRoot, workers: int) -> dict:
    ledger = Ledger(root)
    recs = {s: [r for r in ledger.records(s) if r.started_at and r.ended_at] for s in STAGE_NAMES}
    start = min(r.started_at for rs in recs.values() for r in rs)
    end = max(r.ended_at for rs in recs.values() for r in rs)
    unit_s = sum(r.duration_s for rs in recs.values() for r in rs)
    early = {}
    for stage in STAGE_NAMES:
        for up in STAGES[stage].reads:
            if recs[up] and recs[stage]:
                last = max(r.ended_at for r in recs[up])
                early[f"{stage} before last {up}"] = (sum(r.started_at < last for r in recs[stage]), len(recs[stage]))
    span = (end - start).total_seconds()
    return {"span_s": span, "unit_seconds": unit_s, "workers": workers,
            "span_over_ideal": span / (unit_s / workers), "started_early": early}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="a run's storage root (a folder or s3:// URL)")
    p.add_argument("--workers", type=int, default=2, help="Ray CPUs the run had")
    args = p.parse_args()
    out = overlap(StorageRoot(str(Path(args.root)) if "://" not in args.root else args.root), args.workers)
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
