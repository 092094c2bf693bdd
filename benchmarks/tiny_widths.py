"""Why does (or does not) the tiny suite's wider SAE lie below the narrower? Train the sweep on (site, layer)s'
shuffled activations of a finished run under other schedules, and measure on held-out rows (each array's
last 16,384, never trained on): L0, FVU and dead fraction per SAE, how far training moved the decoder rows
from their start (median cosine, `sae.trainer.initial_sae`), and per variant whether the wider width's L0-FVU
curve lies below the narrower's (`tasks/reporting/findings.py`, as the report checks it). A variant is a set
of TrainConfig overrides on the config's `sae` (validated, so `epochs_by_width` takes effect). One torch
thread, as a train unit runs.

    .venv/bin/python benchmarks/tiny_widths.py runs/tiny --cells res:2,att:0 \
        --variants '[{}, {"epochs_by_width": {}}, {"epochs": 4, "epochs_by_width": {}}]'
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import REPO, write_json
from flows.config import load_suite_config
from run_rows import shuffled_rows
from sae import SweepPoint, TrainConfig, train_saes
from sae.trainer import initial_sae
from tasks.reporting.findings import wider_below

HELD_OUT = 16384


def held_out_fit(trained, xh: torch.Tensor, cfg: TrainConfig) -> list[dict]:
    var = (xh - xh.mean(0)).pow(2).sum()
    out = []
    with torch.no_grad():
        for t in trained:
            xhat, f = t.sae(xh)
            start = initial_sae(SweepPoint(t.architecture, t.width, t.sparsity), xh.shape[1], cfg).W_dec
            moved = torch.nn.functional.cosine_similarity(t.sae.W_dec, start).median()
            out.append({"width": t.width, "sparsity": t.sparsity, "steps": t.steps, "tokens": t.tokens,
                        "l0": float((f != 0).sum(1).float().mean()), "fvu": float((xh - xhat).pow(2).sum() / var),
                        "dead": float(((f != 0).sum(0) == 0).float().mean()), "cos_to_init": float(moved)})
    return out


def width_gaps(saes: list[dict]) -> list[dict]:
    widths = sorted({s["width"] for s in saes})
    return [dict(wider_below([s for s in saes if s["width"] == a], [s for s in saes if s["width"] == b]),
                 narrow=a, wide=b) for a, b in zip(widths, widths[1:])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--config", type=Path, default=REPO / "configs/tiny.yaml", help="the run's config")
    p.add_argument("--cells", default="res:2", help="site:layer,... or 'all'")
    p.add_argument("--site", help="with --layer: one cell (as --cells site:layer)")
    p.add_argument("--layer", type=int)
    p.add_argument("--variants", default='[{}]', help="JSON list of TrainConfig overrides")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/tiny-widths.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    suite = load_suite_config(args.config)
    base = suite.sae.model_dump()
    if args.site is not None:
        args.cells = f"{args.site}:{args.layer if args.layer is not None else 2}"
    cells = ([(s, layer) for s in suite.sites for layer in range(4)] if args.cells == "all" else
             [(c.split(":")[0], int(c.split(":")[1])) for c in args.cells.split(",")])
    results = []
    for site, layer in cells:
        x, scale = shuffled_rows(args.run, site, layer)
        xt, xh = x[:-HELD_OUT], x[-HELD_OUT:]
        for override in json.loads(args.variants):
            cfg = TrainConfig.model_validate({**base, "checkpoint_every": 0, **override})
            t0 = time.perf_counter()
            trained = train_saes(xt, None, cfg, norm_scale=scale)
            saes = held_out_fit(trained, xh, cfg)
            row = {"site": site, "layer": layer, "override": override, "train_s": time.perf_counter() - t0,
                   "saes": saes, "widths": width_gaps(saes)}
            results.append(row)
            print(f"{site}/{layer} {json.dumps(override)} {row['train_s']:.0f} s:",
                  "; ".join(f"w{s['width']} λ{s['sparsity']:g} {s['steps']} steps L0 {s['l0']:.1f} FVU {s['fvu']:.4f} "
                            f"dead {s['dead']:.2f}" for s in saes),
                  "|", ", ".join(f"{c['wide']} below {c['narrow']}: {c['holds']}"
                                 + (f" (worst gap {c['max_gap']:+.4f})" if c.get("overlap") else "")
                                 for c in row["widths"]), flush=True)
    write_json(args.out or REPO / "benchmarks/results/tiny-widths.json",
               {"run": str(args.run), "config": str(args.config), "held_out_rows": HELD_OUT, "results": results})


if __name__ == "__main__":
    main()
