"""Feature splitting in a finished run against chance (issue 13): per (site, layer, setting), the median and
99th percentile of each wide latent's decoder cosine to its nearest narrower latent (the run's
`splitting.parquet`), beside the same statistics for random Gaussian directions of the same shapes. Where the
two agree, the SAEs of the two widths share no more directions than chance would. And how far training moved
the dictionaries: the median cosine of each trained decoder row to the same row at initialisation (the sweep
point's seeded start, `sae.trainer.initial_sae`).

    .venv/bin/python benchmarks/splitting_baseline.py runs/tiny
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from common import REPO, write_json
from flows.config import load_suite_config
from sae import SweepPoint, load_gemma_scope_npz, nearest_by_decoder_cosine
from sae.trainer import initial_sae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a finished run's root (local)")
    p.add_argument("--config", default=str(REPO / "configs/tiny.yaml"), help="the run's config (its sweep)")
    p.add_argument("--out", default="benchmarks/results/splitting-baseline.json")
    args = p.parse_args()
    run, rows, cfg = Path(args.run), [], load_suite_config(args.config).sae
    slugs = {SweepPoint("jumprelu", cfg.widths[0], lam).slug: lam for lam in cfg.lambdas}
    for path in sorted(run.glob("latents/*/layer_*/splitting.parquet")):
        site, layer = path.parent.parent.name, int(path.parent.name.split("_")[1])
        table = pq.read_table(io.BytesIO(path.read_bytes())).to_pandas()
        for (setting, w1, w2), part in table.groupby(["setting", "narrow_width", "wide_width"]):
            decoders = {w: load_gemma_scope_npz(run / f"saes/{site}/layer_{layer}/width_{w}/{setting}/params.npz")
                        .W_dec.detach() for w in (w1, w2)}
            d = decoders[w1].shape[1]
            moved = {w: float(torch.nn.functional.cosine_similarity(
                dec, initial_sae(SweepPoint("jumprelu", int(w), slugs[setting]), d, cfg).W_dec.detach()).median())
                for w, dec in decoders.items()}
            g = torch.Generator().manual_seed(0)
            _, chance = nearest_by_decoder_cosine(torch.randn(w2, d, generator=g), torch.randn(w1, d, generator=g))
            c = part["cosine"].to_numpy()
            rows.append({"site": site, "layer": layer, "setting": setting, "widths": [int(w1), int(w2)], "d": d,
                         "median": float(np.median(c)), "p99": float(np.quantile(c, 0.99)),
                         "chance_median": float(chance.median()), "chance_p99": float(chance.quantile(0.99)),
                         "at_least_0.7": int((c >= 0.7).sum()),
                         "median_cos_to_init": {str(w): v for w, v in moved.items()}})
            r = rows[-1]
            print(f"{site} layer {layer} {setting} {w1}->{w2} (d {d}): median {r['median']:.3f} p99 {r['p99']:.3f}; "
                  f"chance {r['chance_median']:.3f} / {r['chance_p99']:.3f}; >= 0.7: {r['at_least_0.7']}; "
                  f"decoder rows' cosine to their init (median) {moved[w1]:.3f} / {moved[w2]:.3f}")
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
