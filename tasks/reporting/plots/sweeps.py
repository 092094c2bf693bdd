"""The sparsity/fidelity figures: each metric by layer with one panel per lambda, the metric against L0 for
JumpReLU SAEs, and the same against L0 across architectures."""

from __future__ import annotations

import math
import pathlib
from collections import defaultdict

from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..formatting import (arch_display_name, architectures_in, as_float, fmt_int, sites_in,
                          unique_numbers)
from ..palette import arch_color, site_colors
from .common import METRIC_LABELS, auto_log, new_figure, no_data, save, width_styles


def plot_by_layer(rows: list[dict], metric: str, title: str, path: pathlib.Path) -> pathlib.Path:
    """`metric` against layer, one panel per lambda (lambda moves a metric more than layer does), one line
    per (site, width)."""
    lambdas = unique_numbers(r.get("lambda") for r in rows)
    n_panels = max(1, len(lambdas))
    ncols = min(n_panels, 4)
    nrows = math.ceil(n_panels / ncols)
    fig = new_figure(1.2 + 3.9 * ncols, 0.9 + 3.1 * nrows)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    fig.suptitle(title)
    if not lambdas:
        no_data(axes[0], "no evaluated SAEs")
        return save(fig, path)

    sites = sites_in(rows)
    colors = site_colors(sites)
    widths = unique_numbers(r.get("width") for r in rows)
    styles = width_styles(widths)
    series: dict[tuple[str, float, float], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        key = (str(r.get("site")), as_float(r.get("width")), as_float(r.get("lambda")))
        series[key].append((as_float(r.get("layer")), as_float(r.get(metric))))

    layers = unique_numbers(r.get("layer") for r in rows)
    handles: dict[str, Line2D] = {}
    all_values: list[float] = []
    for ax, lam in zip(axes, lambdas):
        for site in sites:
            for w in widths:
                pts = sorted(p for p in series.get((site, w, lam), []) if not math.isnan(p[0]))
                if not pts:
                    continue
                marker, dash = styles[w]
                xs, ys = zip(*pts)
                all_values.extend(ys)
                label = f"{site} · width {int(w)}"
                (line,) = ax.plot(xs, ys, linestyle=dash, marker=marker, color=colors[site], label=label,
                                  markeredgecolor="white", markeredgewidth=0.6)
                handles.setdefault(label, line)
        ax.set_title(f"λ = {lam:g}")
        ax.set_xlabel("layer")
        # Ticks on the layers that exist (a suite often samples every few layers); a locator would invent 4.74.
        if 0 < len(layers) <= 16:
            ax.set_xticks(layers, [fmt_int(v) for v in layers])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(layers) == 1:
            ax.set_xlim(layers[0] - 1, layers[0] + 1)
    for ax in axes[len(lambdas):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if metric == "l0":
        auto_log(axes[0], all_values, "y")
    if not any(math.isfinite(v) for v in all_values):
        for ax in axes[: len(lambdas)]:
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center",
                    color="#888888")
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncol=min(len(handles), 6))
    return save(fig, path)


def _draw_sweeps(ax, pts: list[dict], metric: str, by: str, colors: dict[str, str],
                 styles: dict[float, tuple[str, str]]) -> None:
    """(L0, metric) points coloured by `by` (site or architecture), marked by width; faint lines join the
    sparsity settings of one (`by`, layer, width): each is that SAE family's sparsity/fidelity curve."""
    families: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in pts:
        families[(str(r.get(by)), as_float(r.get("layer")), as_float(r.get("width")))].append(
            (as_float(r["l0"]), as_float(r[metric])))
    for (group, _, _), fam in families.items():
        if len(fam) > 1:
            xs, ys = zip(*sorted(fam))
            ax.plot(xs, ys, color=colors[group], alpha=0.25, linewidth=1.0, zorder=1)
    for group, color in colors.items():
        for w, (marker, _) in styles.items():
            sel = [r for r in pts if str(r.get(by)) == group and as_float(r.get("width")) == w]
            if sel:
                ax.scatter([as_float(r["l0"]) for r in sel], [as_float(r[metric]) for r in sel],
                           color=color, marker=marker, s=34, alpha=0.85, edgecolors="white", linewidths=0.5,
                           zorder=2)


def _sweep_legend(fig, group_colors: dict[str, str], styles: dict[float, tuple[str, str]]) -> None:
    """One legend for `_draw_sweeps`'s two encodings: a dot per colour group (label -> colour), a marker per width."""
    handles = [Line2D([], [], linestyle="", marker="o", color=color, label=label)
               for label, color in group_colors.items()]
    handles += [Line2D([], [], linestyle="", marker=marker, color="#555555", label=f"width {int(w)}")
                for w, (marker, _) in styles.items()]
    fig.legend(handles=handles, loc="outside right upper")


def plot_pareto(rows: list[dict], metric: str, title: str, path: pathlib.Path) -> pathlib.Path:
    """`metric` against L0, coloured by site: where each SAE family sits on its sparsity/fidelity curve."""
    fig = new_figure(6.3, 4.6)
    ax = fig.subplots()
    fig.suptitle(title)
    pts = [r for r in rows if math.isfinite(as_float(r.get("l0"))) and math.isfinite(as_float(r.get(metric)))]
    if not pts:
        no_data(ax, "no finite (L0, metric) pairs")
        return save(fig, path)

    sites = sites_in(pts)
    colors = site_colors(sites)
    widths = unique_numbers(r.get("width") for r in pts)
    styles = width_styles(widths)
    auto_log(ax, [as_float(r["l0"]) for r in pts], "x")

    _draw_sweeps(ax, pts, metric, "site", colors, styles)
    ax.set_xlabel(METRIC_LABELS["l0"])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))

    _sweep_legend(fig, {s: colors[s] for s in sites}, styles)
    return save(fig, path)


def plot_architectures(rows: list[dict], path: pathlib.Path) -> pathlib.Path:
    """The JumpReLU paper's comparison: FVU and delta loss against L0, one colour per architecture, one
    column per site; faint lines join the sparsity sweep of one (architecture, layer, width)."""
    sites = sites_in(rows)
    metrics = (("fvu", "FVU"), ("delta_loss", "delta loss"))
    fig = new_figure(1.4 + 4.0 * len(sites), 1.0 + 3.3 * len(metrics))
    axes = fig.subplots(len(metrics), len(sites), squeeze=False)
    fig.suptitle("Sparsity vs fidelity by architecture (lower-left is better)")
    archs = architectures_in(rows)
    colors = {a: arch_color(a) for a in archs}
    widths = unique_numbers(r.get("width") for r in rows)
    styles = width_styles(widths)
    for row_i, (metric, label) in enumerate(metrics):
        for col_i, site in enumerate(sites):
            ax = axes[row_i][col_i]
            pts = [r for r in rows if str(r.get("site")) == site and math.isfinite(as_float(r.get("l0")))
                   and math.isfinite(as_float(r.get(metric)))]
            if not pts:
                no_data(ax, "no finite values")
                continue
            _draw_sweeps(ax, pts, metric, "architecture", colors, styles)
            auto_log(ax, [as_float(r["l0"]) for r in pts], "x")
            if row_i == 0:
                ax.set_title(site)
            if row_i == len(metrics) - 1:
                ax.set_xlabel(METRIC_LABELS["l0"])
            if col_i == 0:
                ax.set_ylabel(METRIC_LABELS.get(metric, label))
    _sweep_legend(fig, {arch_display_name(a): colors[a] for a in archs}, styles)
    return save(fig, path)

