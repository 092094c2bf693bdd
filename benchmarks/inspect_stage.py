"""The inspect stage's time and memory against the held-out set's size (issue 13): one inspect unit of a
finished run, in a child process per size (so its peak RSS is its own), on a copy of the unit's inputs (the
held-out tokens and the (site, layer)'s SAEs), with `evaluate.n_seqs` set to each size.

Reported per size: the unit's wall time, the child's peak RSS, and its RSS before the unit (imports, the
model loaded once): what the unit adds is the difference. Torch on one thread, as a Ray unit of one CPU.

    .venv/bin/python benchmarks/inspect_stage.py --run runs/tiny --sizes 16,64      # after `make run`
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cpu_name, write_json


def child(args: argparse.Namespace) -> None:
    import torch

    from flows.config import load_suite_config
    from storage import layout
    from storage.root import StorageRoot
    from tasks.lm.model import load_model
    from tasks.stages.inspect import inspect_site_layer

    torch.set_num_threads(1)
    cfg = load_suite_config(args.config)
    cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"n_seqs": args.size})})
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("tokens/eval", f"saes/{layout.site_layer(args.site, args.layer)}"):
            shutil.copytree(Path(args.run) / part, Path(tmp) / part)
        load_model(cfg.model)  # cached: the unit's own load is then free, as in a warm worker
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        result = inspect_site_layer(cfg, args.site, args.layer, StorageRoot(tmp))
        wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n_seqs": args.size, "n_tokens": result.metrics["n_tokens"], "wall_s": round(wall, 3),
                      "rss_before_mb": round(before / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
                      "n_saes": len(result.metrics["saes"])}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/tiny", help="a finished run's root (local)")
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--site", default="res")
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--sizes", default="16,64", help="held-out sequences per measurement")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/inspect-cpu.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    rows = []
    for r in range(args.rounds):  # sizes interleaved: this machine's speed drifts from run to run
        for size in [int(s) for s in args.sizes.split(",")]:
            out = subprocess.run([sys.executable, __file__, "--child", "--size", str(size), "--run", args.run,
                                  "--config", args.config, "--site", args.site, "--layer", str(args.layer)],
                                 check=True, capture_output=True, text=True, cwd=REPO,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            rows.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), round=r))
            print(rows[-1], flush=True)
    best = {}
    for row in rows:
        k = row["n_seqs"]
        if k not in best or row["wall_s"] < best[k]["wall_s"]:
            best[k] = row
    write_json(args.out, {"cpu": cpu_name(), "site": args.site, "layer": args.layer, "run": args.run,
                          "rows": rows, "best": list(best.values())})
    for row in best.values():
        print(f"{row['n_seqs']} held-out sequences ({row['n_tokens']} tokens), {row['n_saes']} SAEs: "
              f"{row['wall_s']:.2f} s; RSS {row['rss_before_mb']:.0f} MB before the unit, peak {row['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
