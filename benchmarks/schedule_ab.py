"""The tiny suite run by `scopeflow run` (a process each) with prefect-ray's RayTaskRunner and with
scopeflow's ShapedRayTaskRunner in turn, each run's units scheduled as its ledger shows
(benchmarks/schedule_overlap.py): the span against unit-seconds / workers, the gaps between a worker's units.

    .venv/bin/python benchmarks/schedule_ab.py [--rounds 2] [--config configs/tiny.yaml]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common import REPO, write_json
from infra.prefect_server import start_server, stop_server
from schedule_overlap import overlap
from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.registry import STAGE_NAMES

# the task runner the suite flow builds, by the module and class to build it from
RUNNERS = {"prefect-ray RayTaskRunner": ("prefect_ray", "RayTaskRunner"),
           "ShapedRayTaskRunner": ("flows.ray_runner", "ShapedRayTaskRunner")}
_RUN = ("import sys, importlib, flows.suite; from flows.cli import main; "
        "flows.suite.ShapedRayTaskRunner = getattr(importlib.import_module(sys.argv[1]), sys.argv[2]); "
        "raise SystemExit(main(['run', sys.argv[3]]))")


def worker_gaps(root: StorageRoot) -> list[float]:
    """Seconds between one unit's end and the next unit's start in the same Ray worker process."""
    by_pid: dict[int, list] = {}
    for stage in STAGE_NAMES:
        for r in Ledger(root).records(stage):
            by_pid.setdefault(r.pid, []).append(r)
    gaps = []
    for recs in by_pid.values():
        recs.sort(key=lambda r: r.started_at)
        gaps += [(b.started_at - a.ended_at).total_seconds() for a, b in zip(recs, recs[1:])]
    return gaps


def run_once(config: Path, runner: tuple[str, str], tmp: Path, api_url: str) -> dict:
    cfg = yaml.safe_load(config.read_text())
    cfg["storage"]["root"] = str(tmp / "run")
    cfg["orchestration"]["prefect_home"] = str(tmp / "prefect")
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # the server is the benchmark's, as the tests' session server: the process imports Prefect before its
    # CLI would have started one
    subprocess.run([sys.executable, "-c", _RUN, *runner, str(path)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "PREFECT_API_URL": api_url})
    root = StorageRoot(cfg["storage"]["root"])
    out = overlap(root, cfg["orchestration"]["num_cpus"])
    gaps = worker_gaps(root)
    out.update(gap_sum_s=sum(gaps), gap_median_s=statistics.median(gaps), gap_max_s=max(gaps))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--config", type=Path, default=REPO / "configs/tiny.yaml")
    args = p.parse_args()
    results = {name: [] for name in RUNNERS}
    home = Path(tempfile.mkdtemp(prefix="sf-sched-prefect-"))
    server, api_url = start_server(home)
    try:
        _rounds(args, results, api_url)
    finally:
        stop_server(server)
        shutil.rmtree(home, ignore_errors=True)
    write_json(REPO / "benchmarks/results/schedule-ab-cpu.json", {"config": str(args.config), "rounds": results},
               default=str)


def _rounds(args: argparse.Namespace, results: dict, api_url: str) -> None:
    for _ in range(args.rounds):
        for name, runner in RUNNERS.items():
            tmp = Path(tempfile.mkdtemp(prefix="sf-sched-"))
            try:
                results[name].append(run_once(args.config, runner, tmp, api_url))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            r = results[name][-1]
            print(f"{name}: span {r['span_s']:.1f} s, unit-s {r['unit_seconds']:.1f}, ratio "
                  f"{r['span_over_ideal']:.3f}, worker gaps {r['gap_sum_s']:.1f} s (median {r['gap_median_s']:.2f}), "
                  f"early {r['started_early']}", flush=True)


if __name__ == "__main__":
    main()
