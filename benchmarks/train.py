"""Training speed of `sae.train_saes` (issue #3): steady-state tokens/s and FLOP/s against this machine's own
measured dense-matmul peak, for several widths and K SAEs sharing one stream; whether reading the rows from
a zarr store slows a step; the same step in SAELens's JumpReLU trainer; where one step's time goes; and
(issue #12) our dense and sparse steps against SAELens at L0 ~1% of the width.

    .venv/bin/python benchmarks/train.py                  # CPU defaults: d_in 256, batch 1024, a few minutes
    .venv/bin/python benchmarks/train.py --device cuda    # d_in 2304, widths 16k/65k, batch 4096, bf16 autocast
    .venv/bin/python benchmarks/train.py --only-sparse    # the sparse comparison alone

Prints its tables and writes benchmarks/results/train-<device>.json (tasks/capacity.py reads it), or
train-sparse-<device>.json with --only-sparse.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time

from common import REPO, cpu_name, write_json

sys.path.insert(0, str(REPO))  # this checkout's sae/, storage/
os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens's fit() progress bar; read when torch imports tqdm

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from train_common import (CycledRows, make_rows, measure_peak, norm_scale_of, plan_for,  # noqa: E402
                          shaped_encoder_mm, step_flops, time_ours)
from train_data import bench_data  # noqa: E402
from train_profile import profile_step  # noqa: E402
from train_reference import time_reference  # noqa: E402
from train_saelens import saelens_available, saelens_row  # noqa: E402
from train_sparse import bench_sparse, print_sparse, sparse_verdict  # noqa: E402


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def fmt_rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.2f} T" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} G"


def fmt_count(x: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def bench_ours(args, device: torch.device, pool: torch.Tensor, scale: float, peak: float,
               after=None) -> list[dict]:
    """Every (K, width); `after(row)` runs right after each, so a comparison made there sees the same
    machine load as the row it compares with."""
    rows = []
    rate_guess = 0.3 * peak
    for k in args.ks:
        for width in args.widths:
            flops = step_flops(args.batch, args.d_in, width, k)
            plan = plan_for(args, flops, rate_guess)
            source = CycledRows(pool, plan.total * args.batch)
            print(f"  ours  width {width:>6}  K {k}: {plan.warm} warm + {plan.timed} timed steps ...",
                  flush=True)
            r = time_ours(source, args.d_in, width, k, plan, args, device, scale)
            rate = flops * r["steps_per_s"]
            rate_guess = rate  # the next (wider or larger-K) config is planned at this FLOP rate
            r.update({"width": width, "K": k, "batch": args.batch, "d_in": args.d_in,
                      "flops_per_step": flops,
                      "tokens_per_s": args.batch * r["steps_per_s"],
                      "sae_tokens_per_s": k * args.batch * r["steps_per_s"],
                      "flops_per_s": rate, "frac_of_peak": rate / peak,
                      "median_flops_per_s": flops / r["median_s_per_step"]})
            rows.append(r)
            if after is not None:
                after(r)
    return rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d-in", type=int, help="default 2304 on CUDA (Gemma-2-2B), 256 on CPU")
    ap.add_argument("--batch", type=int, help="rows per step; default 4096 on CUDA, 1024 on CPU")
    ap.add_argument("--widths", help="comma list; default 16384,65536 on CUDA, 1024,4096,16384,65536 on CPU")
    ap.add_argument("--ks", default="1,4", help="numbers of SAEs sharing one stream (comma list)")
    ap.add_argument("--autocast", choices=["float32", "bfloat16"],
                    help="matmul dtype (weights, thresholds, Adam stay fp32); default bfloat16 on CUDA")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 for float32 matmuls (CUDA)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--every", type=int, help="log_every = clock interval in steps; default 5 CUDA, 1 CPU")
    ap.add_argument("--warm", type=int, help="untimed steps first; default 10 CUDA, 1 CPU")
    ap.add_argument("--min-timed", type=int, help="default 20 CUDA, 2 CPU")
    ap.add_argument("--max-timed", type=int, default=200)
    ap.add_argument("--budget-s", type=float, help="timed seconds aimed at per config; default 4 CUDA, 5 CPU")
    ap.add_argument("--pool-batches", type=int, default=16, help="distinct batches the in-memory data cycles")
    ap.add_argument("--peak-sizes", help="square matmul sizes; default 4096,8192,16384 CUDA, 1024,2048 CPU")
    ap.add_argument("--no-shaped-mm", action="store_true", help="skip timing the encoder-shaped matmul")
    ap.add_argument("--data-width", type=int, help="width of the data-reading check; default 16384 CUDA, 4096 CPU")
    ap.add_argument("--data-timed", type=int, help="timed steps of the data-reading check; default 40 CUDA, 6 CPU")
    ap.add_argument("--data-repeats", type=int, default=3, help="interleaved runs per source; the best counts")
    ap.add_argument("--no-data", action="store_true", help="skip the data-reading check")
    ap.add_argument("--no-saelens", action="store_true", help="skip the SAELens comparison")
    ap.add_argument("--profile-width", type=int, help="default 16384 CUDA, 4096 CPU; 0 skips the profile")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--sparse-widths", default="16384,65536", help="widths of the sparse-step comparison; '' skips it")
    ap.add_argument("--sparse-l0", type=float, default=0.01, help="L0 / width the comparison's SAEs start at")
    ap.add_argument("--sparse-repeats", type=int, default=2, help="interleaved runs per system; the best counts")
    ap.add_argument("--sparse-timed", type=int, help="timed steps per run; default 20 CUDA, 3 CPU")
    ap.add_argument("--crossover-width", help="widths (comma list); default 16384 CUDA, 4096,16384 CPU; '' skips")
    ap.add_argument("--crossover-fracs", default="0.02,0.05,0.1,0.2,0.3", help="starting L0 / width (comma list)")
    ap.add_argument("--crossover-timed", type=int, help="timed steps per crossover run; default 20 CUDA, 3 CPU")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction,
                    help="time the plain dense reference step (train_reference.py) at --widths; default on CUDA")
    ap.add_argument("--only-sparse", action="store_true", help="only the sparse comparison (and the peak)")
    ap.add_argument("--tmp-dir", help="where the temporary zarr stores go (local disk)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON path; default benchmarks/results/train-<device>.json")
    args = ap.parse_args()

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")

    def default(name, gpu, cpu):
        if getattr(args, name) is None:
            setattr(args, name, gpu if cuda else cpu)

    default("d_in", 2304, 256)
    default("batch", 4096, 1024)
    default("widths", "16384,65536", "1024,4096,16384,65536")
    default("autocast", "bfloat16", "float32")
    default("every", 5, 1)
    default("warm", 10, 1)
    default("min_timed", 20, 2)
    default("budget_s", 4.0, 5.0)
    default("peak_sizes", "4096,8192,16384", "1024,2048")
    default("data_width", 16384, 4096)
    default("data_timed", 40, 6)
    default("profile_width", 16384, 4096)
    default("sparse_timed", 20, 3)
    default("crossover_width", "16384", "4096,16384")
    default("crossover_timed", 20, 3)
    default("reference", True, False)
    args.sparse_widths = [int(w) for w in str(args.sparse_widths).split(",") if w]
    args.crossover_width = [int(w) for w in str(args.crossover_width).split(",") if w]
    args.crossover_fracs = [float(f) for f in str(args.crossover_fracs).split(",")]
    if args.only_sparse:
        args.widths, args.no_saelens, args.no_data, args.profile_width, args.no_shaped_mm = "", True, True, 0, True
    args.widths = [int(w) for w in str(args.widths).split(",") if w]
    args.ks = [int(k) for k in str(args.ks).split(",")]
    args.peak_sizes = [int(s) for s in str(args.peak_sizes).split(",")]
    if args.out is None:
        name = "train-sparse" if args.only_sparse else "train"
        args.out = str(REPO / "benchmarks" / "results" / f"{name}-{torch.device(args.device).type}.json")
    return args


def print_tables(res: dict) -> None:
    con = Console(width=140)
    meta = res["meta"]
    con.print(f"\n[bold]SAE training speed[/bold]  {meta['device_name']} ({meta['device']}), torch "
              f"{meta['torch']}, {meta['threads']} threads, d_in {meta['d_in']}, batch {meta['batch']}, "
              f"matmuls {meta['matmul_dtype']} (autocast {meta['autocast']})")
    pk = Table(title="Dense matmul peak (square torch.mm, best of sizes)")
    for c in ("dtype", "FLOP/s", "best size", "per size"):
        pk.add_column(c)
    for p in res["peak"].values():
        pk.add_row(p["dtype"], fmt_rate(p["flops_per_s"]), str(p["best_size"]),
                   ", ".join(f"{n}: {fmt_rate(v)}" for n, v in p["per_size"].items()))
    con.print(pk)
    peak = res["peak_used"]
    if peak.get("raised_by"):
        con.print(f"peak used: {fmt_rate(peak['flops_per_s'])}FLOP/s ({peak['raised_by']})", markup=False)
    t = Table(title=f"Our trainer (train_saes), steady state; % of {peak['dtype']} peak {fmt_rate(peak['flops_per_s'])}FLOP/s")
    for c in ("width", "K", "steps", "ms/step", "median (min-max)", "tokens/s", "SAE-tokens/s", "FLOP/s", "% peak",
              "enc-shape mm"):
        t.add_column(c, justify="right")
    for r in res["ours"]:
        iv = r["interval_s_per_step"]
        spread = f"{1e3 * r['median_s_per_step']:.1f} ({1e3 * min(iv):.0f}-{1e3 * max(iv):.0f})" if iv else "-"
        t.add_row(str(r["width"]), str(r["K"]), f"{r['warm_steps']}+{r['timed_steps']}",
                  f"{1e3 * r['s_per_step']:.1f}", spread, fmt_count(r["tokens_per_s"]),
                  fmt_count(r["sae_tokens_per_s"]), fmt_rate(r["flops_per_s"]), f"{100 * r['frac_of_peak']:.1f}%",
                  fmt_rate(r["shaped_mm_flops_per_s"]) if r.get("shaped_mm_flops_per_s") else "-")
    if res["ours"]:
        con.print(t)
    d = res.get("data_reading")
    if d:
        dt_ = Table(title=f"Does reading the data slow a step? width {d['width']}, K 1, "
                          f"{d['warm_steps']}+{d['timed_steps']} steps, best of {len(next(iter(d['sources'].values()))['runs_steps_per_s'])} interleaved runs")
        for c in ("source", "ms/step", "steps/s", "vs memory", "vs memory (medians)", "reader alone (steps/s)",
                  "read MB/s"):
            dt_.add_column(c, justify="right" if c != "source" else "left")
        for name, e in d["sources"].items():
            dt_.add_row(name, f"{1e3 * e['s_per_step']:.1f}", f"{e['steps_per_s']:.2f}",
                        f"{e['ratio_vs_memory']:.3f}", f"{e['ratio_vs_memory_median']:.3f}",
                        f"{e['read_only_steps_per_s']:.1f}" if "read_only_steps_per_s" in e else "-",
                        f"{e['read_only_mb_per_s']:.0f}" if "read_only_mb_per_s" in e else "-")
        con.print(dt_)
    s = res.get("saelens")
    if s and s.get("available"):
        st = Table(title=f"SAELens {s['version']} JumpReLU trainer, same data/width/batch, K 1")
        for c in ("width", "ours ms/step", "SAELens ms/step", "ours / SAELens (speed)", "SAELens % peak"):
            st.add_column(c, justify="right")
        for r in s["rows"]:
            st.add_row(str(r["width"]), f"{1e3 / r['ours_steps_per_s']:.1f}", f"{1e3 * r['s_per_step']:.1f}",
                       f"{r['ratio_ours_over_saelens']:.2f}x", f"{100 * r['frac_of_peak']:.1f}%")
        con.print(st)
    elif s is not None and not s.get("available"):
        con.print("SAELens not installed: pip install -e '.[interop]'", markup=False)
    if res.get("sparse"):
        print_sparse(res["sparse"], fmt_rate, fmt_count)
    p = res.get("profile")
    if p:
        pt = Table(title=f"Where a step goes: width {p['width']}, K 1, {p['clock']}, mean of {p['steps']} steps "
                         f"({p['profiled_ms_per_step']:.1f} ms/step under the profiler)")
        for c in ("phase", "ops", "ms/step", "share"):
            pt.add_column(c, justify="left" if c in ("phase", "ops") else "right")
        for b in p["breakdown"]:
            if b["share"] >= 0.002:
                pt.add_row(b["phase"], b["kind"], f"{b['ms_per_step']:.2f}", f"{100 * b['share']:.1f}%")
        con.print(pt)
    for line in res.get("verdicts", []):
        con.print(line, markup=False)


def verdicts(res: dict) -> list[str]:
    out = []
    big = [r for r in res["ours"] if r["width"] >= 16384]
    if big:
        worst = min(big, key=lambda r: r["frac_of_peak"])
        out.append(f"goal >= 50% of {res['meta']['matmul_dtype']} matmul peak at widths >= 16k: worst "
                   f"{100 * worst['frac_of_peak']:.1f}% (width {worst['width']}, K {worst['K']}) -> "
                   f"{'MET' if worst['frac_of_peak'] >= 0.5 else 'NOT MET'} on {res['meta']['device_name']}")
    for ref in res.get("reference", []):
        mine = next((r for r in res["ours"] if r["width"] == ref["width"] and r["K"] == 1), None)
        if mine:
            out.append(f"width {ref['width']}: ours dense {100 * mine['frac_of_peak']:.1f}% of peak, plain reference "
                       f"{100 * ref['frac_of_peak']:.1f}%: ours / reference "
                       f"{mine['steps_per_s'] / ref['steps_per_s']:.2f}")
    if "data_reading" in res:
        zarrs = [e for n, e in res["data_reading"]["sources"].items() if n.startswith("zarr")]
        worst_ratio = min(e["ratio_vs_memory"] for e in zarrs)
        worst_median = min(e["ratio_vs_memory_median"] for e in zarrs)
        out.append(f"data reading: slowest zarr source runs at {worst_ratio:.3f}x the in-memory step rate "
                   f"({worst_median:.3f}x by median step) -> "
                   f"{'no measurable slowdown' if worst_ratio >= 0.95 else 'SLOWER'} (threshold 0.95)")
    if res.get("sparse") and sparse_verdict(res["sparse"]):
        out.append(sparse_verdict(res["sparse"]))
    return out


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    mm_kind = "bf16" if args.autocast == "bfloat16" else ("tf32" if args.tf32 else "fp32")
    if args.tf32:
        torch.set_float32_matmul_precision("high")

    # % peak divides by the best square torch.mm of the training's matmul dtype, measured here at the same
    # thread count: fp32 (tf32 with --tf32) for float32 training, bf16 for bf16 autocast
    print(f"peak: square torch.mm on {device} ...", flush=True)
    kinds = ["fp32", "tf32", "bf16"] if device.type == "cuda" else (["fp32", "bf16"] if mm_kind == "bf16" else ["fp32"])
    min_time = 1.0 if device.type == "cuda" else 1.5
    peak = {k: measure_peak(device, k, args.peak_sizes, min_time) for k in kinds}
    shaped: dict[int, float] = {}
    if not args.no_shaped_mm:
        shaped = {w: shaped_encoder_mm(device, mm_kind, args.batch, args.d_in, w, min_time / 2) for w in args.widths}
    peak_used = dict(peak[mm_kind])
    if shaped and max(shaped.values()) > peak_used["flops_per_s"]:
        # a busy machine can make the square runs slow: never divide by less than the best matmul seen
        w = max(shaped, key=shaped.get)
        peak_used.update(flops_per_s=shaped[w], raised_by=f"encoder-shaped mm [{args.batch},{args.d_in}]x"
                                                            f"[{args.d_in},{w}] beat the square sizes")
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "device": str(device), "device_name": device_name(device), "cpu": cpu_name(),
            "cuda": torch.version.cuda if device.type == "cuda" else None, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "d_in": args.d_in, "batch": args.batch, "autocast": args.autocast,
            "matmul_dtype": mm_kind, "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "master_weights": "float32 (parameters, thresholds, Adam state)", "flops_per_step": "12 * B * d_in * W * K",
            "python": platform.python_version(), "numpy": np.__version__, "argv": sys.argv[1:],
            "args": dict(vars(args)), "zarr": zarr.__version__,
            "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}}

    pool = make_rows(args.pool_batches * args.batch, args.d_in, device, args.seed)
    scale = norm_scale_of(pool)
    meta["norm_scale"] = scale
    saelens: dict | None = None
    if not args.no_saelens:
        ok, info = saelens_available()
        saelens = {"available": ok, "version" if ok else "reason": info, "rows": []}
        if not ok:
            print(f"SAELens not installed: pip install -e '.[interop]'  ({info})", flush=True)

    def after(row: dict) -> None:
        if saelens and saelens["available"] and row["K"] == 1:
            saelens["rows"].append(saelens_row(args, device, pool, scale, peak_used["flops_per_s"], row))

    print(f"our trainer: widths {args.widths}, K {args.ks}"
          + (" (SAELens after each K=1 row)" if saelens and saelens["available"] else "") + " ...", flush=True)
    ours = bench_ours(args, device, pool, scale, peak_used["flops_per_s"], after)
    for r in ours:
        r["shaped_mm_flops_per_s"] = shaped.get(r["width"])
    res: dict = {"meta": meta, "peak": peak, "peak_used": peak_used, "ours": ours}
    if args.reference:
        print(f"plain dense reference step: widths {args.widths} ...", flush=True)
        res["reference"] = [time_reference(pool, w, args.batch, device, args.autocast, args.warm, args.budget_s,
                                           args.min_timed, args.max_timed, peak_used["flops_per_s"])
                            for w in args.widths]
    if saelens is not None:
        res["saelens"] = saelens
    if not args.no_data:
        print("data reading: memory vs zarr on disk ...", flush=True)
        res["data_reading"] = bench_data(args, device, peak_used["flops_per_s"])
    if args.profile_width:
        print(f"profile: width {args.profile_width} ...", flush=True)
        res["profile"] = profile_step(args, device, pool, scale)
    if args.sparse_widths or args.crossover_width:
        print(f"sparse step: widths {args.sparse_widths}, ours dense / ours sparse / SAELens; crossover at "
              f"{args.crossover_width} ...", flush=True)
        res["sparse"] = bench_sparse(args, device, pool, args.seed, save=lambda part: write_json(
            args.out, {**res, "sparse": part}, indent=2, default=str))

    res["verdicts"] = verdicts(res)
    meta["benchmark_wall_s"] = time.perf_counter() - t_start

    out = write_json(args.out, res, indent=2, default=str)
    print_tables(res)
    print(f"\nwrote {out}  ({meta['benchmark_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
