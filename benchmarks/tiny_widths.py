"""Is the tiny suite's wider SAE worse because it is undertrained? Train the tiny sweep's widths on one
(site, layer)'s shuffled activations of a finished run under longer schedules, and compare L0 and FVU on
held-out rows (the array's last 16,384, never trained on), and how far each schedule moves the decoder rows
from their initialisation (median cosine to the start, `sae.trainer.initial_sae`). One torch thread, as a
train unit runs.

    .venv/bin/python benchmarks/tiny_widths.py runs/tiny --site res --layer 2 \
        --variants '[{}, {"batch_size": 256, "epochs": 4}, {"batch_size": 256, "epochs": 8}]'
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import zarr

from common import REPO, write_json
from flows.config import load_suite_config
from sae import SweepPoint, train_saes
from sae.trainer import initial_sae
from storage import layout
from storage.arrays import DecodedRows
from storage.root import StorageRoot
from tasks.stages.train import norm_scale

HELD_OUT = 16384


def held_out_fit(trained, xh: torch.Tensor, cfg) -> list[dict]:
    var = (xh - xh.mean(0)).pow(2).sum()
    out = []
    with torch.no_grad():
        for t in trained:
            xhat, f = t.sae(xh)
            start = initial_sae(SweepPoint(t.architecture, t.width, t.sparsity), xh.shape[1], cfg).W_dec
            moved = torch.nn.functional.cosine_similarity(t.sae.W_dec, start).median()
            out.append({"width": t.width, "sparsity": t.sparsity, "l0": float((f != 0).sum(1).float().mean()),
                        "fvu": float((xh - xhat).pow(2).sum() / var), "cos_to_init": float(moved)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--config", type=Path, default=REPO / "configs/tiny.yaml", help="the run's config")
    p.add_argument("--site", default="res")
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--variants", default='[{}, {"batch_size": 256, "epochs": 4}, {"batch_size": 256, "epochs": 8}]',
                   help="JSON list of TrainConfig overrides")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/tiny-widths-{site}-layer{layer}.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    base = load_suite_config(args.config).sae
    g = zarr.open_group(store=StorageRoot(str(args.run)).zarr_store(layout.shuffled(args.site, args.layer),
                                                                   read_only=True), mode="r")
    x = DecodedRows(g["x"])[:].float()
    xt, xh = x[:-HELD_OUT], x[-HELD_OUT:]
    results = []
    for override in json.loads(args.variants):
        cfg = base.model_copy(update={"checkpoint_every": 0, **override})
        t0 = time.perf_counter()
        trained = train_saes(xt, None, cfg, norm_scale=norm_scale(dict(g.attrs)))
        row = {"override": override, "steps": trained[0].steps, "train_s": time.perf_counter() - t0,
               "saes": held_out_fit(trained, xh, cfg)}
        results.append(row)
        print(json.dumps(override), f"{row['steps']} steps, {row['train_s']:.0f} s:",
              ", ".join(f"w{s['width']} λ{s['sparsity']:g} L0 {s['l0']:.1f} FVU {s['fvu']:.4f} "
                        f"cos to init {s['cos_to_init']:.3f}" for s in row["saes"]),
              flush=True)
    write_json(args.out or REPO / f"benchmarks/results/tiny-widths-{args.site}-layer{args.layer}.json",
               {"run": str(args.run), "site": args.site, "layer": args.layer, "held_out_rows": HELD_OUT,
                "results": results})


if __name__ == "__main__":
    main()
