"""Does the train stage's worker environment (tasks/registry.py: glibc's mmap and trim thresholds raised) still
pay with the sparse step (issue #12)? The same sparse training steps in a Ray worker started with that
environment and in one started without it, alternating; tokens/s, minor page faults and system time per step.

    .venv/bin/python benchmarks/train_malloc.py     # CPU: widths 16384,65536, L0 ~1%, d_in 256, batch 1024

Prints a table and writes benchmarks/results/train-malloc-cpu.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from types import SimpleNamespace

from common import REPO, cpu_name, write_json

sys.path.insert(0, str(REPO))  # this checkout's sae/, tasks/, infra/

import ray  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from infra.config import OrchestrationConfig  # noqa: E402
from infra.ray_local import init_ray  # noqa: E402
from tasks.registry import get_stage  # noqa: E402
from train_common import CycledRows, Plan, make_rows, norm_scale_of, threshold_for_l0, time_ours  # noqa: E402


def sparse_steps(opts: dict, width: int) -> dict:
    """In a worker: `timed` sparse steps of one JumpReLU SAE started at L0 = l0 * width, on centred rows."""
    args = SimpleNamespace(**opts)
    torch.set_num_threads(args.threads)
    pool = make_rows(args.pool_batches * args.batch, args.d_in, torch.device("cpu"), args.seed)
    rows = pool - pool.mean(0)
    scale = norm_scale_of(rows)
    threshold = threshold_for_l0(rows, scale, width, args.l0, args.seed)
    plan = Plan(1, args.warm, args.timed)
    r = time_ours(CycledRows(rows, plan.total * args.batch), args.d_in, width, 1, plan, args, torch.device("cpu"),
                  scale, threshold_init=threshold, step="sparse")
    r.update(width=width, tokens_per_s=args.batch * r["steps_per_s"], pid=os.getpid(),
             malloc_env={k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")})
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="16384,65536")
    ap.add_argument("--l0", type=float, default=0.01, help="L0 / width at init")
    ap.add_argument("--d-in", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--timed", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per environment; the best counts")
    ap.add_argument("--pool-batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train-malloc-cpu.json"))
    args = ap.parse_args()
    opts = {k: v for k, v in vars(args).items() if k not in ("widths", "out", "repeats")}
    opts["autocast"] = "float32"
    widths = [int(w) for w in args.widths.split(",")]

    init_ray(OrchestrationConfig(num_cpus=args.threads))
    # both workers get their own runtime environment, so each is a fresh process of its own pool
    path = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "benchmarks")])}
    envs = {"default": path, "train stage": {**path, **dict(get_stage("train").env)}}
    task = ray.remote(num_cpus=args.threads, max_retries=0)(sparse_steps)
    runs: dict[str, dict[int, list[dict]]] = {name: {w: [] for w in widths} for name in envs}
    for width in widths:
        for _ in range(args.repeats):
            for name, env in envs.items():
                print(f"  width {width:>6}, {name} environment ...", flush=True)
                runs[name][width].append(ray.get(task.options(runtime_env={"env_vars": env}).remote(opts, width)))
    ray.shutdown()

    table = Table(title=f"Sparse steps in a Ray worker, with and without the train stage's environment (best of "
                        f"{args.repeats} alternating runs; d_in {args.d_in}, batch {args.batch}, "
                        f"{args.threads} threads)")
    for c in ("width", "environment", "ms/step", "tokens/s", "minor faults/step", "sys s/step", "speed-up"):
        table.add_column(c, justify="right")
    rows = []
    for width in widths:
        best = {name: max(runs[name][width], key=lambda r: r["steps_per_s"]) for name in envs}
        for name, r in best.items():
            gain = r["steps_per_s"] / best["default"]["steps_per_s"]
            table.add_row(str(width), name, f"{1e3 * r['s_per_step']:.0f}", f"{r['tokens_per_s']:,.0f}",
                          f"{r['minor_faults_per_step']:,.0f}", f"{r['sys_s_per_step']:.2f}", f"{gain:.2f}x")
            rows.append({"width": width, "environment": name, "env_vars": envs[name], "speed_up": gain,
                         "runs_steps_per_s": [x["steps_per_s"] for x in runs[name][width]], **r})
    Console(width=140).print(table)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(),
            "torch": torch.__version__, "argv": sys.argv[1:], "args": vars(args)}
    out = write_json(args.out, {"meta": meta, "rows": rows}, indent=2, default=str)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
