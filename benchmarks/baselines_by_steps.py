"""JumpReLU against TopK (and optionally ReLU + L1) on one (site, layer) of a finished run, at several
training lengths: does the gap between architectures on the tiny suite close with more steps?

Reads `shuffled/{site}/layer_{L}` of a run root and trains with that suite's `sae` config, overriding
only the epochs and the sweep; prints the final L0 and batch FVU of each SAE and the wall time.

    python benchmarks/baselines_by_steps.py configs/tiny.yaml --site res --layer 2 --epochs 2 8
    python benchmarks/baselines_by_steps.py configs/tiny.yaml --epochs 2 --architectures jumprelu --bandwidth 0.01
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import zarr

from flows.config import load_suite_config
from flows.prepare import open_root
from sae import train_saes
from storage.arrays import DecodedRows
from storage.layout import shuffled
from tasks.stages.train import norm_scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--site", default="res")
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--epochs", type=int, nargs="+", default=[2, 8])
    p.add_argument("--architectures", nargs="+", default=["jumprelu", "topk"])
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--topk-ks", type=int, nargs="+", default=[10, 30])
    p.add_argument("--l1-coefficients", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--bandwidth", type=float, help="override the JumpReLU STE bandwidth (default: the config's)")
    args = p.parse_args()

    cfg = load_suite_config(args.config)
    root = open_root(cfg)
    group = zarr.open_group(store=root.zarr_store(shuffled(args.site, args.layer), read_only=True), mode="r")
    x, scale = DecodedRows(group["x"]), norm_scale(dict(group.attrs))
    results = []
    for epochs in args.epochs:
        train_cfg = cfg.sae.model_copy(update={"epochs": epochs, "widths": [args.width],
                                               "architectures": args.architectures, "checkpoint_every": 0,
                                               "topk_ks": args.topk_ks, "l1_coefficients": args.l1_coefficients,
                                               "log_every": 10**9,
                                               "bandwidth": args.bandwidth or cfg.sae.bandwidth})
        t0 = time.perf_counter()
        trained = train_saes(x, None, train_cfg, norm_scale=scale)
        wall = time.perf_counter() - t0
        print(f"{args.site} layer {args.layer}, epochs {epochs}: {trained[0].steps} steps, "
              f"{trained[0].tokens:,} tokens, bandwidth {train_cfg.bandwidth:g}, {wall:.1f} s "
              f"({torch.get_num_threads()} threads)")
        for t in trained:
            last = t.log[-1]
            print(f"  {t.architecture:8s} {t.sparsity:<7g} L0 {last['l0']:6.1f}  FVU (batch) {last['fvu_batch']:.3f}"
                  f"  dead {last['dead_frac']:.1%}")
            results.append({"epochs": epochs, "steps": t.steps, "architecture": t.architecture,
                            "sparsity": t.sparsity, "l0": last["l0"], "fvu_batch": last["fvu_batch"],
                            "dead_frac": last["dead_frac"], "wall_s": wall})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
