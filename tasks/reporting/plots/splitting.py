"""Feature splitting across widths: how close each latent of a wider SAE lies to its nearest latent of the
next narrower one (the inspect stage's `splitting.parquet`), and the narrow latents that split most."""

from __future__ import annotations

import pathlib
from collections import Counter, defaultdict

import numpy as np

from ..formatting import site_key
from ..palette import site_colors
from .common import new_figure, no_data, save

SPLITTING_FILE = "feature_splitting.png"
#: a wide latent this close to a narrow one (decoder cosine) counts as one of its splits
SPLIT_COSINE = 0.7


def plot_splitting(splitting: list[dict], path: pathlib.Path) -> pathlib.Path:
    """Per site, the distribution of nearest-narrower-latent cosines, pooled over layers, settings and pairs."""
    by_site: dict[str, list[float]] = defaultdict(list)
    for r in splitting:
        by_site[str(r["site"])].append(float(r["cosine"]))
    sites = sorted(by_site, key=site_key)
    fig = new_figure(6.5, 3.8)
    ax = fig.subplots()
    fig.suptitle("Feature splitting: each wide latent's nearest narrower latent")
    if not sites:
        no_data(ax, "no site has two widths at one setting")
        return save(fig, path)
    colors, edges = site_colors(sites), np.linspace(-0.2, 1.0, 49)
    for site in sites:
        counts, _ = np.histogram(np.clip(by_site[site], edges[0], edges[-1]), edges)
        ax.stairs(counts / max(1, counts.sum()), edges, color=colors[site], linewidth=1.4,
                  label=f"{site} ({len(by_site[site]):,} latents)")
    ax.axvline(SPLIT_COSINE, color="#777777", linestyle="--", linewidth=1)
    ax.set_xlabel("decoder cosine to the nearest latent of the narrower SAE")
    ax.set_ylabel("fraction of wide latents")
    ax.legend(fontsize=8, loc="upper left")
    return save(fig, path)


def split_examples(splitting: list[dict], n: int = 5) -> list[dict]:
    """The narrow latents with the most wide latents at cosine >= SPLIT_COSINE, most first: site, layer,
    setting, the two widths, the narrow latent and its close wide latents (closest first)."""
    close: dict[tuple, list[tuple[float, int]]] = defaultdict(list)
    for r in splitting:
        if r["cosine"] >= SPLIT_COSINE:
            key = (r["site"], r["layer"], r["setting"], r["narrow_width"], r["wide_width"], r["narrow_latent"])
            close[key].append((-float(r["cosine"]), int(r["wide_latent"])))
    counts = Counter({k: len(v) for k, v in close.items() if len(v) >= 2})
    out = []
    for key, _ in sorted(counts.items(), key=lambda kv: (-kv[1], site_key(kv[0][0]), kv[0][1:]))[:n]:
        site, layer, setting, w1, w2, latent = key
        out.append({"site": site, "layer": layer, "setting": setting, "narrow_width": w1, "wide_width": w2,
                    "narrow_latent": latent, "wide": [(w, -c) for c, w in sorted(close[key])]})
    return out
