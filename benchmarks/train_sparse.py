"""benchmarks/train.py's sparse-step comparison (issue #12): tokens/s per SAE of our dense step, our sparse step
(sae/sparse_step.py) and SAELens's JumpReLU trainer on the same rows, width and batch, each SAE started at
L0 = --sparse-l0 of its width; FLOP/s counted for the work each step actually does; and the L0 / width at
which the sparse step overtakes the dense one (what `auto`'s limit rests on).

The rows are the benchmark's synthetic rows centred: raw, their large mean decides z, so every row would
fire the same latents; centred, each row fires its own, as a trained SAE's rows do."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sae.sparse_step import SPARSE_MAX_L0_FRACTION
from train_common import CycledRows, Plan, norm_scale_of, threshold_for_l0, time_ours, work_flops
from train_saelens import saelens_available, time_saelens

SYSTEMS = ("dense", "sparse", "saelens")


def _time(name: str, rows, width: int, plan: Plan, args, device, scale: float, threshold: float) -> dict:
    print(f"  {name:<7} width {width:>6}  L0 ~{args.sparse_l0:g} of it: {plan.warm} warm + {plan.timed} timed "
          "steps ...", flush=True)
    if name == "saelens":
        return time_saelens(rows, width, plan, args, device, scale, threshold)
    source = CycledRows(rows, plan.total * args.batch)
    return time_ours(source, args.d_in, width, 1, plan, args, device, scale, threshold_init=threshold, step=name)


def _entry(name: str, runs: list[dict], args, width: int) -> dict:
    """The best of the interleaved runs (a busy machine only ever slows one down), with the work it did."""
    best = max(runs, key=lambda r: r["steps_per_s"])
    l0 = best.get("timed_mean_l0")
    flops = work_flops(args.batch, args.d_in, width, l0 if name == "sparse" else None)
    keep = ("steps_per_s", "s_per_step", "median_s_per_step", "interval_s_per_step", "warm_steps", "timed_steps",
            "minor_faults_per_step", "sys_s_per_step", "timed_mean_l0")
    return {**{k: best[k] for k in keep if k in best}, "tokens_per_s": args.batch * best["steps_per_s"],
            "runs_steps_per_s": [r["steps_per_s"] for r in runs], "work_flops_per_step": flops,
            "work_flops_per_s": flops * best["steps_per_s"]}


def bench_sparse(args, device, pool, seed: int, save=None) -> dict:
    """`save(partial)` runs after each width, so a run cut short keeps what it measured."""
    rows = pool - pool.mean(0)
    scale = norm_scale_of(rows)
    systems = SYSTEMS if saelens_available()[0] else SYSTEMS[:2]
    out = {"l0_fraction": args.sparse_l0, "rows": "benchmark rows, centred", "norm_scale": scale,
           "repeats": args.sparse_repeats, "auto_limit": SPARSE_MAX_L0_FRACTION.get(device.type), "widths": []}
    for width in args.sparse_widths:
        threshold = threshold_for_l0(rows, scale, width, args.sparse_l0, seed)
        plan = Plan(args.every, args.warm, args.sparse_timed)
        runs: dict[str, list[dict]] = {name: [] for name in systems}
        for _ in range(args.sparse_repeats):  # interleaved, so a burst of load hits one run, not one system
            for name in systems:
                runs[name].append(_time(name, rows, width, plan, args, device, scale, threshold))
        entry = {"width": width, "threshold_init": threshold, **{n: _entry(n, r, args, width) for n, r in runs.items()}}
        entry["sparse_over_dense"] = entry["sparse"]["steps_per_s"] / entry["dense"]["steps_per_s"]
        if "saelens" in entry:
            entry["sparse_over_saelens"] = entry["sparse"]["steps_per_s"] / entry["saelens"]["steps_per_s"]
            entry["dense_over_saelens"] = entry["dense"]["steps_per_s"] / entry["saelens"]["steps_per_s"]
        out["widths"].append(entry)
        if save is not None:
            save(out)
    if args.crossover_width:
        out["crossover"] = crossover(args, device, rows, scale, seed)
        if save is not None:
            save(out)
    return out


def crossover(args, device, rows, scale: float, seed: int) -> list[dict]:
    """Dense and sparse steps at several starting L0 / width, interleaved, best of --sparse-repeats each."""
    plan = Plan(args.every, args.warm, args.crossover_timed)
    out = []
    for width in args.crossover_width:
        for fraction in args.crossover_fracs:
            threshold = threshold_for_l0(rows, scale, width, fraction, seed)
            source = CycledRows(rows, plan.total * args.batch)
            print(f"  crossover width {width}, L0 ~{fraction:g} of it: dense and sparse ...", flush=True)
            runs: dict[str, list[dict]] = {"dense": [], "sparse": []}
            for _ in range(args.sparse_repeats):
                for step, got in runs.items():
                    got.append(time_ours(source, args.d_in, width, 1, plan, args, device, scale,
                                         threshold_init=threshold, step=step))
            best = {step: min(got, key=lambda r: r["s_per_step"]) for step, got in runs.items()}
            out.append({"width": width, "l0_fraction_init": fraction, "l0": best["sparse"]["timed_mean_l0"],
                        "dense_s_per_step": best["dense"]["s_per_step"],
                        "sparse_s_per_step": best["sparse"]["s_per_step"],
                        "sparse_over_dense": best["dense"]["s_per_step"] / best["sparse"]["s_per_step"],
                        "runs_s_per_step": {k: [r["s_per_step"] for r in v] for k, v in runs.items()}})
    return out


def print_sparse(res: dict, fmt_rate, fmt_count) -> None:
    con = Console(width=160)
    t = Table(title=f"Sparse step (issue 12): tokens/s per SAE, K 1, L0 ~{res['l0_fraction']:g} of the width at "
                    f"init, best of {res['repeats']} interleaved runs; FLOP/s of the work each step does")
    for c in ("width", "L0", "ours dense", "ours sparse", "SAELens", "sparse / SAELens", "sparse / dense",
              "work FLOP/s dense / sparse / SAELens", "faults/step d / s / SL", "sys s/step d / s / SL"):
        t.add_column(c, justify="right")
    for e in res["widths"]:
        names = [n for n in SYSTEMS if n in e]
        t.add_row(str(e["width"]), f"{e['sparse']['timed_mean_l0']:.0f}",
                  *(fmt_count(e[n]["tokens_per_s"]) if n in e else "-" for n in SYSTEMS),
                  f"{e['sparse_over_saelens']:.2f}x" if "sparse_over_saelens" in e else "-",
                  f"{e['sparse_over_dense']:.2f}x",
                  " / ".join(fmt_rate(e[n]["work_flops_per_s"]) for n in names),
                  " / ".join(f"{e[n]['minor_faults_per_step'] / 1e3:.0f}k" for n in names),
                  " / ".join(f"{e[n]['sys_s_per_step']:.2f}" for n in names))
    if res["widths"]:
        con.print(t)
    if res.get("crossover"):
        c = Table(title=f"Where the sparse step overtakes the dense one, best of {res['repeats']} interleaved runs; "
                        f"auto's limit here: L0 / width <= {res['auto_limit']}")
        for col in ("width", "L0 / width", "L0", "dense ms/step", "sparse ms/step", "sparse speed-up"):
            c.add_column(col, justify="right")
        for r in res["crossover"]:
            c.add_row(str(r["width"]), f"{r['l0'] / r['width']:.3f}", f"{r['l0']:.0f}",
                      f"{1e3 * r['dense_s_per_step']:.1f}",
                      f"{1e3 * r['sparse_s_per_step']:.1f}", f"{r['sparse_over_dense']:.2f}x")
        con.print(c)


def sparse_verdict(res: dict) -> str | None:
    rows = [e for e in res["widths"] if "sparse_over_saelens" in e and e["width"] >= 16384]
    if not rows:
        return None
    worst = min(rows, key=lambda e: e["sparse_over_saelens"])
    return (f"sparse step goal >= 3x SAELens's tokens/s at widths >= 16k, L0 <= 1%: worst "
            f"{worst['sparse_over_saelens']:.2f}x (width {worst['width']}) -> "
            f"{'MET' if worst['sparse_over_saelens'] >= 3 else 'NOT MET'}")
