"""What torch's fused Adam saves a tiny train unit: the sweep of `configs/tiny.yaml` (4 SAEs) for one pass
over a (site, layer)'s shuffled rows of a finished run, with the trainer's fused Adam and with torch's
default (for-loop) Adam, alternating, best of `--rounds`. One torch thread, as a train unit runs.

    .venv/bin/python benchmarks/adam_fused.py runs/tiny [--site res --layer 2 --rounds 3]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import sae.trainer
from common import REPO, write_json
from flows.config import load_suite_config
from run_rows import shuffled_rows
from sae import train_saes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--config", type=Path, default=REPO / "configs/tiny.yaml")
    p.add_argument("--site", default="res")
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/adam-fused-cpu.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_suite_config(args.config).sae.model_copy(update={"checkpoint_every": 0, "epochs_by_width": {},
                                                                "epochs": 1})
    x, scale = shuffled_rows(args.run, args.site, args.layer)
    fused_devices = sae.trainer.FUSED_ADAM_DEVICES
    times: dict[str, list[float]] = {"fused": [], "for-loop": []}
    for _ in range(args.rounds):
        for name, devices in (("for-loop", frozenset()), ("fused", fused_devices)):
            sae.trainer.FUSED_ADAM_DEVICES = devices
            t0 = time.perf_counter()
            trained = train_saes(x, None, cfg, norm_scale=scale)
            times[name].append(time.perf_counter() - t0)
            print(f"{name}: {trained[0].steps} steps of {len(trained)} SAEs in {times[name][-1]:.2f} s", flush=True)
    sae.trainer.FUSED_ADAM_DEVICES = fused_devices
    best = {k: min(v) for k, v in times.items()}
    print(f"best of {args.rounds}: for-loop {best['for-loop']:.2f} s, fused {best['fused']:.2f} s, "
          f"speed-up {best['for-loop'] / best['fused']:.2f}x")
    write_json(args.out, {"run": str(args.run), "site": args.site, "layer": args.layer, "steps": trained[0].steps,
                          "saes": len(trained), "seconds": times, "best": best,
                          "speedup": best["for-loop"] / best["fused"]})


if __name__ == "__main__":
    main()
