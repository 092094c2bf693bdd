"""Does a run's report show what Gemma Scope shows? Reads the run's evals/ and prints, as the report's
"Gemma Scope's findings" section does (tasks/reporting/findings.py), where each finding holds and where not.

    .venv/bin/python benchmarks/tiny_findings.py runs/tiny [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq

from tasks.reporting.findings import findings, width_checks


def read_evals(run: Path) -> list[dict]:
    rows = []
    for f in sorted((run / "evals").glob("*/layer_*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a local run folder")
    p.add_argument("--json", type=Path, help="write the findings and the per-(site, layer) width checks here too")
    args = p.parse_args()
    rows = read_evals(args.run)
    found = findings(rows)
    for f in found:
        print(f"{f.claim}: {f.held} of {f.of}")
        for e in f.exceptions:
            print(f"  {e}")
    if args.json:
        args.json.write_text(json.dumps({"findings": [dataclasses.asdict(f) for f in found],
                                         "widths": width_checks(rows)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
