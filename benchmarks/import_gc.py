"""What Python's cyclic garbage collector costs a cold process of this project while it imports: a Ray worker
(flows.units, then the Gemma 2 model code its first model load pulls in) and a CLI driver (flows.cli), with
the interpreter's default thresholds and with the ones flows/__init__.py sets. Each sample is a fresh
interpreter; variants are interleaved so the machine's drift hits them alike. The child times its own
imports (process CPU) and, through gc.callbacks, every collection; the figures are medians, with the ratio
to the default in the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/import_gc.py [--runs 7] [--out benchmarks/results/import-gc-cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

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


def sample(setup: str, imports: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(setup=setup, imports=imports)], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "."}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results = {}
    for workload, imports in WORKLOADS.items():
        runs = {v: [] for v in VARIANTS}
        for _ in range(args.runs):
            for variant, setup in VARIANTS.items():
                runs[variant].append(sample(setup, imports))
        base = statistics.median(r["cpu_s"] for r in runs["interpreter default"])
        results[workload] = {}
        for variant, rs in runs.items():
            cpu, gc_s = statistics.median(r["cpu_s"] for r in rs), statistics.median(r["gc_s"] for r in rs)
            results[workload][variant] = {"median_import_cpu_s": round(cpu, 3), "median_gc_s": round(gc_s, 3),
                                          "ratio_to_default": round(cpu / base, 3), "threshold": rs[0]["threshold"],
                                          "collections": rs[0]["collections"], "samples": rs}
            print(f"{workload:10s} {variant:20s} imports {cpu:5.2f} CPU-s, of which GC {gc_s:4.2f} s "
                  f"({rs[0]['collections']} collections by generation)  x{cpu / base:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"runs": args.runs, "python": sys.version.split()[0], "results": results},
                                       indent=1))


if __name__ == "__main__":
    main()
