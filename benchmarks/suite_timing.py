"""Wall time of a full tiny-suite run from a clean storage root, per-stage times from the ledger, and the
suite's metrics table, printed as Markdown for BENCHMARKS.md.

    .venv/bin/python benchmarks/suite_timing.py [CONFIG] [--keep]

The run goes to a fresh temporary root (the config's root is overridden) with its own local Prefect
server, exactly as `scopeflow run` does it; the embedded assets are built first and not timed.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import REPO

sys.path.insert(0, str(REPO))

from storage.ledger import Ledger  # noqa: E402
from storage.root import StorageRoot  # noqa: E402
from tasks.plan import STAGES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="configs/tiny.yaml")
    ap.add_argument("--keep", action="store_true", help="keep the run's folder")
    args = ap.parse_args()
    from tasks.lm.embedded import ensure_embedded_assets
    ensure_embedded_assets()

    tmp = Path(tempfile.mkdtemp(prefix="scopeflow-bench-"))
    cfg = yaml.safe_load((REPO / args.config).read_text())
    cfg["storage"]["root"] = str(tmp / "run")
    cfg.setdefault("orchestration", {})["prefect_home"] = str(tmp / "prefect")
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own server, as `make run`
    t0 = time.monotonic()
    proc = subprocess.run([str(REPO / ".venv/bin/scopeflow"), "run", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:])
        return 1
    ledger = Ledger(StorageRoot(cfg["storage"]["root"]))
    print(f"## `scopeflow run {args.config}` from a clean root\n")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print(f"Wall time (Prefect server start, Ray start, all stages, report): **{wall:.1f} s**\n")
    print("| stage | units | sum of unit times (s) | slowest unit (s) |")
    print("|---|---:|---:|---:|")
    for stage in STAGES:
        recs = ledger.records(stage)
        ds = [r.duration_s for r in recs if r.duration_s is not None]
        print(f"| {stage} | {len(recs)} | {sum(ds):.1f} | {max(ds):.1f} |")
    print("\n```")
    table_start = proc.stdout.find("SAEs of suite")
    print(proc.stdout[table_start:].strip() if table_start >= 0 else proc.stdout.strip())
    print("```")
    if not args.keep:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
