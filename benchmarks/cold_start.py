"""What a cold process of a run costs before it does any work, the test suite's largest expense:

- imports, with Python's cyclic collector at the interpreter's default thresholds and at the ones
  flows/__init__.py sets, for a Ray worker (flows.units, then the Gemma 2 model code its first model load
  pulls in) and a CLI driver (flows.cli): the child times its own imports (process CPU) and, through
  gc.callbacks, every collection;
- a Prefect server's start on a new database and on one already migrated (tests.helpers.seeded_prefect_home):
  seconds until healthy and the CPU of its process group;
- a Ray instance as the tests start one (tests.helpers.ray_head_argv, one CPU): the CPU of its
  process group once its raylet and agents are up, and per minute idle after that.

Samples are fresh processes, variants interleaved so the machine's drift hits them alike; figures are medians,
with the ratio to the first variant in the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/cold_start.py [--runs 5] [--out benchmarks/results/cold-start-cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from session_cpu import HZ, processes
from infra.prefect_server import free_port, launch_server, stop_server, wait_healthy
from infra.processes import stop_process_group
from tests.helpers import ray_head_argv, seeded_prefect_home

WORKLOADS = {
    "ray worker": "import flows.units; import transformers.models.gemma2.modeling_gemma2",
    "cli driver": "import flows.cli",
}
# The default variant keeps flows/__init__.py from changing the thresholds; both then import the same code.
VARIANTS = {
    "interpreter default": "gc.set_threshold = lambda *a: None",
    "flows/__init__.py": "",
}
_CHILD = """
import gc, json, time
{setup}
spent = {{"n": [0, 0, 0], "s": [0.0, 0.0, 0.0]}}
began = [0.0]
def timed(phase, info):
    if phase == "start":
        began[0] = time.process_time()
    else:
        spent["n"][info["generation"]] += 1
        spent["s"][info["generation"]] += time.process_time() - began[0]
gc.callbacks.append(timed)
t0 = time.process_time()
{imports}
print(json.dumps({{"cpu_s": time.process_time() - t0, "gc_s": sum(spent["s"]), "collections": spent["n"],
                  "threshold": gc.get_threshold()}}))
"""


def sample(setup: str, code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(setup=setup, imports=code)], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "."}).stdout
    return json.loads(out.strip().splitlines()[-1])


def _group_cpu(pgid: int) -> float:
    """CPU seconds of every live process in a process group (the server and what it started), with what
    its processes reaped."""
    return sum(sum(int(x) for x in fields[11:15]) for _, fields, _ in processes() if int(fields[2]) == pgid) / HZ


def server_start(seeded: bool) -> dict:
    home = Path(tempfile.mkdtemp(prefix="cold-start-prefect-"))
    if seeded:
        seeded_prefect_home(home)
    t0 = time.monotonic()
    proc, api_url = launch_server(home)
    try:
        wait_healthy(api_url, timeout=180, proc=proc)
        return {"healthy_s": time.monotonic() - t0, "cpu_s": _group_cpu(proc.pid)}
    finally:
        stop_server(proc)
        shutil.rmtree(home, ignore_errors=True)


def imports(runs: int) -> dict:
    results = {}
    for workload, code in WORKLOADS.items():
        samples = {v: [] for v in VARIANTS}
        for _ in range(runs):
            for variant, setup in VARIANTS.items():
                samples[variant].append(sample(setup, code))
        base = statistics.median(r["cpu_s"] for r in samples["interpreter default"])
        results[workload] = {}
        for variant, rs in samples.items():
            cpu, gc_s = statistics.median(r["cpu_s"] for r in rs), statistics.median(r["gc_s"] for r in rs)
            results[workload][variant] = {"median_import_cpu_s": round(cpu, 3), "median_gc_s": round(gc_s, 3),
                                          "ratio_to_default": round(cpu / base, 3), "threshold": rs[0]["threshold"],
                                          "collections": rs[0]["collections"], "samples": rs}
            print(f"{workload:10s} {variant:20s} imports {cpu:5.2f} CPU-s, of which GC {gc_s:4.2f} s "
                  f"({rs[0]['collections']} collections by generation)  x{cpu / base:.3f}")
    return results


def servers(runs: int) -> dict:
    samples = {"new database": [], "migrated database": []}
    shutil.rmtree(seeded_prefect_home(Path(tempfile.mkdtemp())))  # the template is built before any timed start
    for _ in range(runs):
        for variant in samples:
            samples[variant].append(server_start(seeded=variant == "migrated database"))
    base = statistics.median(r["cpu_s"] for r in samples["new database"])
    out = {}
    for variant, rs in samples.items():
        cpu, wall = statistics.median(r["cpu_s"] for r in rs), statistics.median(r["healthy_s"] for r in rs)
        out[variant] = {"median_cpu_s": round(cpu, 2), "median_healthy_s": round(wall, 2),
                        "ratio_to_new": round(cpu / base, 3), "samples": rs}
        print(f"prefect server, {variant:17s} healthy after {wall:5.1f} s, {cpu:5.1f} CPU-s  x{cpu / base:.3f}")
    return out


def ray_instance(idle_s: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cold-start-ray-", dir="/tmp"))
    proc = subprocess.Popen(ray_head_argv(free_port(), tmp, 1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def group() -> list[str]:
            return [cmd for _, fields, cmd in processes() if int(fields[2]) == proc.pid]
        deadline = time.monotonic() + 120
        while not any("RuntimeEnvAgent" in c for c in group()):
            assert time.monotonic() < deadline and proc.poll() is None, "the Ray instance did not start"
            time.sleep(0.5)
        time.sleep(10)  # the agents' own start
        start = _group_cpu(proc.pid)
        time.sleep(idle_s)
        idle, n = (_group_cpu(proc.pid) - start) * 60 / idle_s, len(group())
    finally:
        stop_process_group(proc, timeout_s=60)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"ray instance: {start:5.1f} CPU-s to start, {idle:4.1f} CPU-s a minute idle ({n} processes)")
    return {"start_cpu_s": round(start, 2), "idle_cpu_s_per_min": round(idle, 2), "idle_measured_s": idle_s,
            "processes": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--ray-idle-s", type=float, default=120)
    args = ap.parse_args()
    results = {"imports": imports(args.runs), "prefect_server_start": servers(max(2, args.runs // 2)),
               "ray_instance": ray_instance(args.ray_idle_s)}
    if args.out:
        args.out.write_text(json.dumps({"runs": args.runs, "python": sys.version.split()[0], "results": results},
                                       indent=1))


if __name__ == "__main__":
    main()
