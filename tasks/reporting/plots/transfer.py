"""Base -> instruction-tuned transfer: the suite's SAEs judged on the model they were trained on and on each
further model of `evaluate.models` (Gemma Scope's check on Gemma 2 9B IT), side by side per site and layer."""

from __future__ import annotations

import math
import pathlib
from collections import defaultdict

from ..formatting import as_float, sites_in, unique_numbers
from ..palette import site_colors
from .common import METRIC_LABELS, new_figure, no_data, save

TRANSFER_FILE = "transfer.png"
_DASHES = ("--", ":", "-.")


def _mean_by_layer(rows: list[dict], site: str, metric: str) -> list[tuple[float, float]]:
    by_layer: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        value = as_float(r.get(metric))
        if r.get("site") == site and not math.isnan(value):
            by_layer[as_float(r.get("layer"))].append(value)
    return sorted((layer, sum(v) / len(v)) for layer, v in by_layer.items())


def transfer_means(rows: list[dict], transfer: list[dict]) -> tuple[list[str], list[dict]]:
    """The evaluation models (the suite's first) and, per (site, layer), each one's mean delta loss and FVU
    over that (site, layer)'s SAEs: {"site", "layer", (metric, model): mean}."""
    models = [str(rows[0].get("model", "base"))] + sorted({str(r["model"]) for r in transfer}) if rows else []
    by_model = {m: rows if i == 0 else [r for r in transfer if r["model"] == m] for i, m in enumerate(models)}
    table = []
    for site in sites_in(rows):
        means = {(metric, m): dict(_mean_by_layer(by_model[m], site, metric))
                 for metric in ("delta_loss", "fvu") for m in models}
        for layer in sorted({layer for v in means.values() for layer in v}):
            table.append({"site": site, "layer": int(layer),
                          **{k: v.get(layer, math.nan) for k, v in means.items()}})
    return models, table


def plot_transfer(rows: list[dict], transfer: list[dict], path: pathlib.Path) -> pathlib.Path:
    """Delta loss and FVU against layer, the mean over each (site, layer)'s SAEs (`transfer_means`): solid on
    the suite's model, dashed on each further model. Lines that lie together mean the SAEs transfer."""
    fig = new_figure(10.5, 3.9)
    axes = fig.subplots(1, 2)
    fig.suptitle("Transfer: the same SAEs on each evaluation model")
    if not rows or not transfer:
        no_data(axes[0], "no further evaluation model")
        return save(fig, path)
    sites = sites_in(rows)
    colors = site_colors(sites)
    models, table = transfer_means(rows, transfer)
    styles = [("-", "o")] + [(_DASHES[i % len(_DASHES)], "s") for i in range(len(models) - 1)]
    for ax, metric in zip(axes, ("delta_loss", "fvu")):
        for site in sites:
            for model, (dash, marker) in zip(models, styles):
                pts = [(r["layer"], r[(metric, model)]) for r in table
                       if r["site"] == site and not math.isnan(r[(metric, model)])]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, linestyle=dash, marker=marker, color=colors[site], label=f"{site} · {model}",
                            markeredgecolor="white", markeredgewidth=0.6)
        ax.set_xlabel("layer")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.set_xticks(unique_numbers(r.get("layer") for r in rows))
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save(fig, path)
