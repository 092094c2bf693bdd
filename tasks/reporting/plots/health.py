"""The training and latent-health figures: training curves from the train logs, and the firing-frequency
histograms the evaluate stage records."""

from __future__ import annotations

import math
import pathlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from ..formatting import as_float, num_key, site_key
from ..palette import site_colors
from ..schema import JUMPRELU
from .common import auto_log, new_figure, no_data, save


def plot_training(train_logs: list[dict], path: pathlib.Path) -> pathlib.Path:
    """Loss, L0 and (where logged) batch FVU against tokens seen, one faint line per SAE coloured by site."""
    curves: dict[tuple, list[dict]] = defaultdict(list)
    for rec in train_logs:
        curves[(str(rec.get("site")), as_float(rec.get("layer")), as_float(rec.get("width")),
                as_float(rec.get("sparsity", rec.get("lambda"))), str(rec.get("architecture", JUMPRELU)))
               ].append(rec)
    panels = [("loss", "training loss"), ("l0", "L0")]
    if any(math.isfinite(as_float(rec.get("fvu_batch"))) for rec in train_logs):
        panels.append(("fvu_batch", "FVU (batch)"))

    if not curves:
        fig = new_figure(9.0, 2.2)
        fig.suptitle("Training curves")
        no_data(fig.subplots(), "no training logs were found for these SAEs")
        return save(fig, path)
    fig = new_figure(1.0 + 4.0 * len(panels), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    fig.suptitle("Training curves (one faint line per SAE)")

    use_tokens = all(math.isfinite(as_float(rec.get("tokens"))) for rec in train_logs)
    x_key = "tokens" if use_tokens else "step"
    sites = sorted({k[0] for k in curves}, key=site_key)
    colors = site_colors(sites)
    per_site = {s: sum(1 for k in curves if k[0] == s) for s in sites}
    for ax, (key, label) in zip(axes, panels):
        values: list[float] = []
        # Drawn interleaved across sites (not site after site) so no site's bundle always hides the others.
        for ck in sorted(curves, key=lambda k: (num_key(k[1]), num_key(k[2]), num_key(k[3]), site_key(k[0]))):
            recs = sorted(curves[ck], key=lambda r: (num_key(r.get(x_key)), num_key(r.get("step"))))
            xs = [as_float(r.get(x_key)) for r in recs]
            ys = [as_float(r.get(key)) for r in recs]
            values.extend(ys)
            # Many SAEs overlap; fade harder the more lines a site contributes so the bundle stays legible.
            alpha = min(0.8, max(0.12, 6.0 / per_site[ck[0]]))
            ax.plot(xs, ys, color=colors[ck[0]], alpha=alpha, linewidth=0.9)
        auto_log(ax, values, "y")
        ax.set_title(label)
        ax.set_xlabel(x_key)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    handles = [Line2D([], [], color=colors[s], linewidth=2, label=f"{s} ({per_site[s]} SAEs)") for s in sites]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
    return save(fig, path)


def _clean_edges(edges: Sequence[float]) -> np.ndarray | None:
    """Edges with a +-inf end (a bin for never-firing latents, say) get a finite end one bin-width away."""
    e = np.asarray([as_float(v) for v in edges], dtype=float)
    finite = np.isfinite(e)
    if e.size < 2 or finite.sum() < 2:
        return None
    step = float(np.median(np.diff(e[finite])))
    if not step > 0:
        return None
    first, last = np.flatnonzero(finite)[[0, -1]]
    for i in range(first - 1, -1, -1):
        e[i] = e[i + 1] - step
    for i in range(last + 1, e.size):
        e[i] = e[i - 1] + step
    if not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        return None
    return e


def _site_histograms(rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Histograms summed per site; a row whose bins differ from the site's first is re-binned by bin centre."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for r in rows:
        counts, edges = r.get("freq_hist"), r.get("freq_hist_edges")
        if counts is None or edges is None:
            continue
        c = np.nan_to_num(np.asarray([as_float(v) for v in counts], dtype=float))
        e = _clean_edges(edges)
        if e is None or e.size != c.size + 1:
            continue
        site = str(r.get("site"))
        if site not in out:
            out[site] = (e, c.copy())
            continue
        ref_e, ref_c = out[site]
        if ref_e.shape == e.shape and np.allclose(ref_e, e):
            ref_c += c
        else:
            centres = np.clip(0.5 * (e[:-1] + e[1:]), ref_e[0], ref_e[-1])
            ref_c += np.histogram(centres, bins=ref_e, weights=c)[0]
    return out


def plot_firing(rows: list[dict], path: pathlib.Path) -> pathlib.Path:
    """Per site, how often latents fire, with the dense threshold and the dead count: latent health at a glance."""
    hists = _site_histograms(rows)
    sites = sorted(hists, key=site_key)
    n = max(1, len(sites))
    fig = new_figure(1.0 + 3.9 * n, 3.8)
    axes = fig.subplots(1, n, sharex=True, squeeze=False).ravel()
    fig.suptitle("Latent firing frequency (all SAEs of a site summed)")
    if not sites:
        no_data(axes[0], "no firing-frequency histograms")
        return save(fig, path)
    colors = site_colors(sites)
    for ax, site in zip(axes, sites):
        edges, counts = hists[site]
        ax.stairs(counts, edges, fill=True, color=colors[site], alpha=0.35)
        ax.stairs(counts, edges, color=colors[site], linewidth=1.2)
        if edges[0] < -1 < edges[-1]:
            ax.axvline(-1, color="#c0392b", linestyle="--", linewidth=1)
            ax.text(-1, 0.97, " dense (10%)", transform=ax.get_xaxis_transform(), color="#c0392b",
                    fontsize=8, va="top", ha="left")
        site_rows = [r for r in rows if str(r.get("site")) == site]
        n_dead = sum(as_float(r.get("n_dead")) for r in site_rows
                     if math.isfinite(as_float(r.get("n_dead"))))
        latents = sum(as_float(r.get("width")) for r in site_rows if math.isfinite(as_float(r.get("width"))))
        note = f"{len(site_rows)} SAEs, {int(latents):,} latents"
        if latents > 0:
            note += f"\ndead: {int(n_dead):,} ({100 * n_dead / latents:.1f}%)"
        ax.text(0.02, 0.97, note, transform=ax.transAxes, va="top", ha="left", fontsize=8, color="#444444")
        ax.set_title(site)
        ax.set_xlabel("log10 firing frequency")
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("latents")
    return save(fig, path)

