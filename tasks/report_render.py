"""Render the suite report: metrics.parquet, PNG plots and a self-contained index.html.

This module is pure presentation. It takes the evaluation rows and training-log records that the report stage
has already gathered from `evals/` and `saes/` and turns them into files in `report/`, so it can be run (and
tested) without the model, the data or any orchestration machinery. The terminal table printed by the CLI and
the HTML table share `format_table_rows`, so a number reads the same wherever a researcher sees it.
"""

from __future__ import annotations

import html
import json
import math
import pathlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, LogFormatterSciNotation, MaxNLocator

__all__ = [
    "TABLE_COLUMNS",
    "PLOT_FILES",
    "format_table_rows",
    "sorted_rows",
    "render_report",
]

# ---------------------------------------------------------------------------------------------------------
# Formatting: one definition of how each metric is written, shared by the terminal and the HTML tables.
# ---------------------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return isinstance(value, float) and math.isnan(value)
    except TypeError:
        return False


def _as_float(value: Any) -> float:
    """NaN for anything that is not a number, so plots and summaries can skip it uniformly."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


_NA = "n/a"


def _fmt_str(value: Any) -> str:
    return _NA if _is_missing(value) else str(value)


def _fmt_int(value: Any) -> str:
    f = _as_float(value)
    return _NA if math.isnan(f) else str(int(round(f)))


def _fmt_g(value: Any) -> str:
    f = _as_float(value)
    return _NA if math.isnan(f) else f"{f:g}"


def _fmt_fixed(decimals: int) -> Callable[[Any], str]:
    def fmt(value: Any) -> str:
        f = _as_float(value)
        if math.isnan(f):
            return _NA
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f"{f:.{decimals}f}"

    return fmt


def _fmt_pct(decimals: int) -> Callable[[Any], str]:
    def fmt(value: Any) -> str:
        f = _as_float(value)
        return _NA if math.isnan(f) else f"{100.0 * f:.{decimals}f}%"

    return fmt


def _fmt_count(value: Any) -> str:
    f = _as_float(value)
    if math.isnan(f):
        return _NA
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(f) >= scale:
            return f"{f / scale:.3g}{suffix}"
    return str(int(round(f)))


class _Column:
    """A table column: its header, the row key it reads, how it is written, and whether it gets a colour scale."""

    def __init__(self, header: str, key: str, fmt: Callable[[Any], str], *, scaled: bool = False,
                 numeric: bool = True, css: str = "") -> None:
        self.header = header
        self.key = key
        self.fmt = fmt
        self.scaled = scaled
        self.numeric = numeric
        self.css = css


_TABLE_SPEC: tuple[_Column, ...] = (
    _Column("site", "site", _fmt_str, numeric=False),
    _Column("layer", "layer", _fmt_int),
    _Column("arch", "architecture", _fmt_str, numeric=False),
    _Column("width", "width", _fmt_int),
    _Column("sparsity", "sparsity", _fmt_g),
    _Column("L0", "l0", _fmt_fixed(1)),
    _Column("FVU", "fvu", _fmt_fixed(3), scaled=True),
    _Column("delta loss", "delta_loss", _fmt_fixed(4), scaled=True),
)

# Extra detail only the HTML table has room for; the terminal table stays at the eight columns above.
_HTML_EXTRA_SPEC: tuple[_Column, ...] = (
    _Column("dead", "dead_frac", _fmt_pct(1)),
    _Column("dense", "dense_frac", _fmt_pct(2)),
    _Column("clean CE", "clean_loss", _fmt_fixed(4)),
    _Column("spliced CE", "spliced_loss", _fmt_fixed(4)),
    _Column("train tokens", "train_tokens", _fmt_count),
    _Column("SAE path", "sae_path", _fmt_str, numeric=False, css="path"),
)

TABLE_COLUMNS: tuple[str, ...] = tuple(c.header for c in _TABLE_SPEC)


def format_table_rows(rows: Iterable[dict]) -> list[list[str]]:
    """Cells for `TABLE_COLUMNS`, in the order the rows are given (use `sorted_rows` for suite order)."""
    return [[col.fmt(row.get(col.key)) for col in _TABLE_SPEC] for row in rows]


# ---------------------------------------------------------------------------------------------------------
# Ordering and grouping
# ---------------------------------------------------------------------------------------------------------

_SITE_ORDER = ("res", "att", "mlp")
_SITE_COLORS = {"res": "#1f77b4", "att": "#ff7f0e", "mlp": "#2ca02c"}
_EXTRA_COLORS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_WIDTH_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_WIDTH_DASHES = ("-", "--", ":", "-.")


def _site_key(site: Any) -> tuple[int, str]:
    s = str(site)
    return (_SITE_ORDER.index(s), s) if s in _SITE_ORDER else (len(_SITE_ORDER), s)


def _num_key(value: Any) -> tuple[int, float]:
    f = _as_float(value)
    return (1, 0.0) if math.isnan(f) else (0, f)


_ARCH_ORDER = ("jumprelu", "topk", "relu")
_ARCH_COLORS = {"jumprelu": "#1f77b4", "topk": "#d62728", "relu": "#7f7f7f"}
_ARCH_NAMES = {"jumprelu": "JumpReLU", "topk": "TopK", "relu": "ReLU + L1"}


def _arch_key(arch: Any) -> tuple[int, str]:
    a = str(arch)
    return (_ARCH_ORDER.index(a), a) if a in _ARCH_ORDER else (len(_ARCH_ORDER), a)


def sorted_rows(rows: Iterable[dict]) -> list[dict]:
    """Suite order (site, layer, architecture, width, sparsity), so every table lists SAEs the same way."""
    return sorted(rows, key=lambda r: (_site_key(r.get("site")), _num_key(r.get("layer")),
                                       _arch_key(r.get("architecture", "jumprelu")), _num_key(r.get("width")),
                                       _num_key(r.get("sparsity", r.get("lambda")))))


def _with_defaults(row: dict) -> dict:
    """Rows from before the baselines existed are JumpReLU rows whose sparsity is their lambda."""
    row = dict(row)
    row.setdefault("architecture", "jumprelu")
    if row.get("sparsity") is None:
        row["sparsity"] = row.get("lambda")
    return row


def _jumprelu(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("architecture") == "jumprelu"]


def _sites(rows: Iterable[dict]) -> list[str]:
    return sorted({str(r.get("site")) for r in rows}, key=_site_key)


def _site_colors(sites: Sequence[str]) -> dict[str, str]:
    colors, extra = {}, iter(_EXTRA_COLORS * (1 + len(sites) // len(_EXTRA_COLORS)))
    for s in sites:
        colors[s] = _SITE_COLORS.get(s) or next(extra)
    return colors


def _unique_numbers(values: Iterable[Any]) -> list[float]:
    return sorted({f for f in (_as_float(v) for v in values) if not math.isnan(f)})


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays become Python values, so pyarrow and json see one kind of input."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------
# metrics.parquet
# ---------------------------------------------------------------------------------------------------------

_ROW_TYPES: dict[str, pa.DataType] = {
    "site": pa.string(),
    "layer": pa.int64(),
    "width": pa.int64(),
    "lambda": pa.float64(),
    "sparsity": pa.float64(),
    "architecture": pa.string(),
    "d_in": pa.int64(),
    "l0": pa.float64(),
    "fvu": pa.float64(),
    "mse": pa.float64(),
    "delta_loss": pa.float64(),
    "clean_loss": pa.float64(),
    "spliced_loss": pa.float64(),
    "dead_frac": pa.float64(),
    "dense_frac": pa.float64(),
    "n_dead": pa.int64(),
    "n_dense": pa.int64(),
    "n_tokens": pa.int64(),
    "freq_hist": pa.list_(pa.int64()),
    "freq_hist_edges": pa.list_(pa.float64()),
    "train_steps": pa.int64(),
    "train_tokens": pa.int64(),
    "sae_path": pa.string(),
}


def _metrics_table(rows: list[dict]) -> pa.Table:
    """Known columns get fixed types so a suite whose values all happen to be integral still reads as floats."""
    keys = [k for k in _ROW_TYPES if any(k in r for r in rows)] if rows else list(_ROW_TYPES)
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    arrays, names = [], []
    for k in keys:
        values = [_plain(r.get(k)) for r in rows]
        if k in _ROW_TYPES:
            try:
                arr = pa.array(values, type=_ROW_TYPES[k], from_pandas=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
                arr = pa.array(values)
        else:
            arr = pa.array(values)
        arrays.append(arr)
        names.append(k)
    return pa.Table.from_arrays(arrays, names=names)


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------

_DPI = 110
_STYLE = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e4e4",
    "grid.linewidth": 0.7,
    "axes.edgecolor": "#888888",
    "axes.axisbelow": True,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "figure.titlesize": 12,
    "figure.titleweight": "bold",
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
}

PLOT_FILES: tuple[str, ...] = (
    "delta_loss_by_layer.png",
    "l0_by_layer.png",
    "fvu_by_layer.png",
    "l0_vs_fvu.png",
    "l0_vs_delta_loss.png",
    "training_curves.png",
    "firing_hist.png",
)

_METRIC_LABELS = {
    "delta_loss": "delta loss (nats/token)",
    "l0": "L0 (active latents/token)",
    "fvu": "FVU",
}


def _new_figure(width: float, height: float) -> Figure:
    """Figures are built on their own Agg canvas, not through pyplot, so no global backend state is touched."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    fig.savefig(path, dpi=_DPI, facecolor="white")
    return path


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="#888888", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


class _PlainLogFormatter(LogFormatterSciNotation):
    """Labels the same log ticks matplotlib would, but as 0.06 / 200 rather than 6x10^-2 / 2x10^2."""

    def __call__(self, x, pos=None):
        label = super().__call__(x, pos)
        return f"{x:g}" if label else ""


def _auto_log(ax, values: Iterable[float], axis: str) -> None:
    """Log scale only when every value is positive and they span more than a decade; otherwise keep it linear."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        target = ax.yaxis if axis == "y" else ax.xaxis
        target.set_major_formatter(_PlainLogFormatter())
        target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _width_styles(widths: Sequence[float]) -> dict[float, tuple[str, str]]:
    return {w: (_WIDTH_MARKERS[i % len(_WIDTH_MARKERS)], _WIDTH_DASHES[i % len(_WIDTH_DASHES)])
            for i, w in enumerate(widths)}


def _plot_by_layer(rows: list[dict], metric: str, title: str, path: pathlib.Path) -> pathlib.Path:
    lambdas = _unique_numbers(r.get("lambda") for r in rows)
    n_panels = max(1, len(lambdas))
    ncols = min(n_panels, 4)
    nrows = math.ceil(n_panels / ncols)
    fig = _new_figure(1.2 + 3.9 * ncols, 0.9 + 3.1 * nrows)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    fig.suptitle(title)
    if not lambdas:
        _no_data(axes[0], "no evaluated SAEs")
        return _save(fig, path)

    sites = _sites(rows)
    colors = _site_colors(sites)
    widths = _unique_numbers(r.get("width") for r in rows)
    styles = _width_styles(widths)
    series: dict[tuple[str, float, float], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        key = (str(r.get("site")), _as_float(r.get("width")), _as_float(r.get("lambda")))
        series[key].append((_as_float(r.get("layer")), _as_float(r.get(metric))))

    layers = _unique_numbers(r.get("layer") for r in rows)
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
            ax.set_xticks(layers, [_fmt_int(v) for v in layers])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(layers) == 1:
            ax.set_xlim(layers[0] - 1, layers[0] + 1)
    for ax in axes[len(lambdas):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
    if metric == "l0":
        _auto_log(axes[0], all_values, "y")
    if not any(math.isfinite(v) for v in all_values):
        for ax in axes[: len(lambdas)]:
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center",
                    color="#888888")
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncol=min(len(handles), 6))
    return _save(fig, path)


def _draw_sweeps(ax, pts: list[dict], metric: str, by: str, colors: dict[str, str],
                 styles: dict[float, tuple[str, str]]) -> None:
    """(L0, metric) points coloured by `by` (site or architecture), marked by width; faint lines join the
    sparsity settings of one (`by`, layer, width): each is that SAE family's sparsity/fidelity curve."""
    families: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in pts:
        families[(str(r.get(by)), _as_float(r.get("layer")), _as_float(r.get("width")))].append(
            (_as_float(r["l0"]), _as_float(r[metric])))
    for (group, _, _), fam in families.items():
        if len(fam) > 1:
            xs, ys = zip(*sorted(fam))
            ax.plot(xs, ys, color=colors[group], alpha=0.25, linewidth=1.0, zorder=1)
    for group, color in colors.items():
        for w, (marker, _) in styles.items():
            sel = [r for r in pts if str(r.get(by)) == group and _as_float(r.get("width")) == w]
            if sel:
                ax.scatter([_as_float(r["l0"]) for r in sel], [_as_float(r[metric]) for r in sel],
                           color=color, marker=marker, s=34, alpha=0.85, edgecolors="white", linewidths=0.5,
                           zorder=2)


def _plot_pareto(rows: list[dict], metric: str, title: str, path: pathlib.Path) -> pathlib.Path:
    fig = _new_figure(6.3, 4.6)
    ax = fig.subplots()
    fig.suptitle(title)
    pts = [r for r in rows if math.isfinite(_as_float(r.get("l0"))) and math.isfinite(_as_float(r.get(metric)))]
    if not pts:
        _no_data(ax, "no finite (L0, metric) pairs")
        return _save(fig, path)

    sites = _sites(pts)
    colors = _site_colors(sites)
    widths = _unique_numbers(r.get("width") for r in pts)
    styles = _width_styles(widths)
    _auto_log(ax, [_as_float(r["l0"]) for r in pts], "x")

    _draw_sweeps(ax, pts, metric, "site", colors, styles)
    ax.set_xlabel(_METRIC_LABELS["l0"])
    ax.set_ylabel(_METRIC_LABELS.get(metric, metric))

    handles = [Line2D([], [], linestyle="", marker="o", color=colors[s], label=s) for s in sites]
    handles += [Line2D([], [], linestyle="", marker=styles[w][0], color="#555555", label=f"width {int(w)}")
                for w in widths]
    fig.legend(handles=handles, loc="outside right upper")
    return _save(fig, path)


ARCHITECTURES_PNG = "architectures_l0_vs_fidelity.png"


def _n_architectures(rows: list[dict]) -> int:
    return len({str(r.get("architecture")) for r in rows})


def _plot_architectures(rows: list[dict], path: pathlib.Path) -> pathlib.Path:
    """The JumpReLU paper's comparison: FVU and delta loss against L0, one colour per architecture, one
    column per site; faint lines join the sparsity sweep of one (architecture, layer, width)."""
    sites = _sites(rows)
    metrics = (("fvu", "FVU"), ("delta_loss", "delta loss"))
    fig = _new_figure(1.4 + 4.0 * len(sites), 1.0 + 3.3 * len(metrics))
    axes = fig.subplots(len(metrics), len(sites), squeeze=False)
    fig.suptitle("Sparsity vs fidelity by architecture (lower-left is better)")
    archs = sorted({str(r.get("architecture")) for r in rows}, key=_arch_key)
    colors = {a: _ARCH_COLORS.get(a, _EXTRA_COLORS[i % len(_EXTRA_COLORS)]) for i, a in enumerate(archs)}
    widths = _unique_numbers(r.get("width") for r in rows)
    styles = _width_styles(widths)
    for row_i, (metric, label) in enumerate(metrics):
        for col_i, site in enumerate(sites):
            ax = axes[row_i][col_i]
            pts = [r for r in rows if str(r.get("site")) == site and math.isfinite(_as_float(r.get("l0")))
                   and math.isfinite(_as_float(r.get(metric)))]
            if not pts:
                _no_data(ax, "no finite values")
                continue
            _draw_sweeps(ax, pts, metric, "architecture", colors, styles)
            _auto_log(ax, [_as_float(r["l0"]) for r in pts], "x")
            if row_i == 0:
                ax.set_title(site)
            if row_i == len(metrics) - 1:
                ax.set_xlabel(_METRIC_LABELS["l0"])
            if col_i == 0:
                ax.set_ylabel(_METRIC_LABELS.get(metric, label))
    handles = [Line2D([], [], linestyle="", marker="o", color=colors[a], label=_ARCH_NAMES.get(a, a)) for a in archs]
    handles += [Line2D([], [], linestyle="", marker=styles[w][0], color="#555555", label=f"width {int(w)}")
                for w in widths]
    fig.legend(handles=handles, loc="outside right upper")
    return _save(fig, path)


def _architecture_section(rows: list[dict]) -> str:
    if _n_architectures(rows) < 2:
        return ""
    return ("<h2>JumpReLU against its baselines</h2>"
            + _figure(ARCHITECTURES_PNG, "FVU and delta loss against L0 for every architecture trained on the same "
                      "data; faint lines join the sparsity sweep of one (architecture, layer, width)."))


def _plot_training(train_logs: list[dict], path: pathlib.Path) -> pathlib.Path:
    curves: dict[tuple, list[dict]] = defaultdict(list)
    for rec in train_logs:
        curves[(str(rec.get("site")), _as_float(rec.get("layer")), _as_float(rec.get("width")),
                _as_float(rec.get("sparsity", rec.get("lambda"))), str(rec.get("architecture", "jumprelu")))
               ].append(rec)
    panels = [("loss", "training loss"), ("l0", "L0")]
    if any(math.isfinite(_as_float(rec.get("fvu_batch"))) for rec in train_logs):
        panels.append(("fvu_batch", "FVU (batch)"))

    if not curves:
        fig = _new_figure(9.0, 2.2)
        fig.suptitle("Training curves")
        _no_data(fig.subplots(), "no training logs were found for these SAEs")
        return _save(fig, path)
    fig = _new_figure(1.0 + 4.0 * len(panels), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    fig.suptitle("Training curves (one faint line per SAE)")

    use_tokens = all(math.isfinite(_as_float(rec.get("tokens"))) for rec in train_logs)
    x_key = "tokens" if use_tokens else "step"
    sites = sorted({k[0] for k in curves}, key=_site_key)
    colors = _site_colors(sites)
    per_site = {s: sum(1 for k in curves if k[0] == s) for s in sites}
    for ax, (key, label) in zip(axes, panels):
        values: list[float] = []
        # Drawn interleaved across sites (not site after site) so no site's bundle always hides the others.
        for ck in sorted(curves, key=lambda k: (_num_key(k[1]), _num_key(k[2]), _num_key(k[3]), _site_key(k[0]))):
            recs = sorted(curves[ck], key=lambda r: (_num_key(r.get(x_key)), _num_key(r.get("step"))))
            xs = [_as_float(r.get(x_key)) for r in recs]
            ys = [_as_float(r.get(key)) for r in recs]
            values.extend(ys)
            # Many SAEs overlap; fade harder the more lines a site contributes so the bundle stays legible.
            alpha = min(0.8, max(0.12, 6.0 / per_site[ck[0]]))
            ax.plot(xs, ys, color=colors[ck[0]], alpha=alpha, linewidth=0.9)
        _auto_log(ax, values, "y")
        ax.set_title(label)
        ax.set_xlabel(x_key)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    handles = [Line2D([], [], color=colors[s], linewidth=2, label=f"{s} ({per_site[s]} SAEs)") for s in sites]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
    return _save(fig, path)


def _clean_edges(edges: Sequence[float]) -> np.ndarray | None:
    """Edges with a +-inf end (a bin for never-firing latents, say) get a finite end one bin-width away."""
    e = np.asarray([_as_float(v) for v in edges], dtype=float)
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
        c = np.nan_to_num(np.asarray([_as_float(v) for v in counts], dtype=float))
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


def _plot_firing(rows: list[dict], path: pathlib.Path) -> pathlib.Path:
    hists = _site_histograms(rows)
    sites = sorted(hists, key=_site_key)
    n = max(1, len(sites))
    fig = _new_figure(1.0 + 3.9 * n, 3.8)
    axes = fig.subplots(1, n, sharex=True, squeeze=False).ravel()
    fig.suptitle("Latent firing frequency (all SAEs of a site summed)")
    if not sites:
        _no_data(axes[0], "no firing-frequency histograms")
        return _save(fig, path)
    colors = _site_colors(sites)
    for ax, site in zip(axes, sites):
        edges, counts = hists[site]
        ax.stairs(counts, edges, fill=True, color=colors[site], alpha=0.35)
        ax.stairs(counts, edges, color=colors[site], linewidth=1.2)
        if edges[0] < -1 < edges[-1]:
            ax.axvline(-1, color="#c0392b", linestyle="--", linewidth=1)
            ax.text(-1, 0.97, " dense (10%)", transform=ax.get_xaxis_transform(), color="#c0392b",
                    fontsize=8, va="top", ha="left")
        site_rows = [r for r in rows if str(r.get("site")) == site]
        n_dead = sum(_as_float(r.get("n_dead")) for r in site_rows
                     if math.isfinite(_as_float(r.get("n_dead"))))
        latents = sum(_as_float(r.get("width")) for r in site_rows if math.isfinite(_as_float(r.get("width"))))
        note = f"{len(site_rows)} SAEs, {int(latents):,} latents"
        if latents > 0:
            note += f"\ndead: {int(n_dead):,} ({100 * n_dead / latents:.1f}%)"
        ax.text(0.02, 0.97, note, transform=ax.transAxes, va="top", ha="left", fontsize=8, color="#444444")
        ax.set_title(site)
        ax.set_xlabel("log10 firing frequency")
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("latents")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# index.html
# ---------------------------------------------------------------------------------------------------------

_CSS = """
:root { --fg:#1d2330; --muted:#6b7280; --line:#e5e7eb; --bg:#f7f8fa; --card:#ffffff; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font:14px/1.45 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 17px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
.sub { color: var(--muted); margin-bottom: 18px; }
.info { display:grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 8px 18px;
        background: var(--card); border:1px solid var(--line); border-radius: 10px; padding: 14px 18px; }
.info div { min-width: 0; }
.info dt { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .05em; }
.info dd { margin: 1px 0 0; font-weight: 600; overflow-wrap: anywhere; }
.info dd code { font-weight: 500; font-size: 12.5px; }
.cards { display:grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 14px; }
.card { background: var(--card); border:1px solid var(--line); border-radius: 10px; padding: 14px 16px;
        border-top: 4px solid var(--site, #999); }
.card h3 { margin: 0 0 8px; font-size: 16px; display:flex; justify-content: space-between; align-items: baseline; }
.card h3 span { color: var(--muted); font-size: 12px; font-weight: 500; }
.kv { display:grid; grid-template-columns: auto 1fr; gap: 3px 12px; font-size: 13px; }
.kv .k { color: var(--muted); }
.kv .v { text-align: right; font-variant-numeric: tabular-nums; font-weight: 600; }
.kv .v small { display: block; color: var(--muted); font-weight: 400; font-size: 11.5px; margin-top: -1px; }
figure { margin: 0 0 18px; background: var(--card); border:1px solid var(--line); border-radius: 10px;
         padding: 10px; }
figure img { display:block; max-width:100%; height:auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 12.5px; padding: 6px 4px 0; }
.grid2 { display:grid; grid-template-columns: 1fr 1fr; gap: 0 18px; }
@media (max-width: 900px) { .grid2 { grid-template-columns: 1fr; } }
.tablewrap { background: var(--card); border:1px solid var(--line); border-radius: 10px; overflow:auto;
             max-height: 80vh; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { position: sticky; top: 0; background: #eef1f5; text-align: left; cursor: pointer; user-select: none;
     font-weight: 600; z-index: 1; }
th:hover { background: #e2e7ee; }
th[data-dir="asc"]::after { content: " \\25B2"; font-size: 10px; color: var(--accent); }
th[data-dir="desc"]::after { content: " \\25BC"; font-size: 10px; color: var(--accent); }
td.num, th.num { text-align: right; }
td.path { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; color: var(--muted); }
td.na { color: #b0b4bb; }
tbody tr:hover td { background-color: #f3f6fb; }
tbody tr:hover td.scaled { filter: brightness(0.97); }
.legend { color: var(--muted); font-size: 12.5px; margin: 0 0 8px; }
.swatch { display:inline-block; width: 70px; height: 10px; border-radius: 3px; vertical-align: middle;
          background: linear-gradient(90deg, #c6ebd0, #fdf0bf, #f7bdb6); margin: 0 6px; }
.empty { color: var(--muted); padding: 18px; }
"""

_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th, i) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var asc = th.dataset.dir !== "asc";
    table.querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = asc ? "asc" : "desc";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v;
      if (x === "" && y === "") return 0;
      if (x === "") return 1;
      if (y === "") return -1;
      var nx = Number(x), ny = Number(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

# Good -> middle -> bad, light enough that dark text stays readable on every cell.
_SCALE_STOPS = ((0xC6, 0xEB, 0xD0), (0xFD, 0xF0, 0xBF), (0xF7, 0xBD, 0xB6))


def _scale_color(t: float) -> str:
    t = min(1.0, max(0.0, t))
    seg = 0 if t <= 0.5 else 1
    u = t * 2 if seg == 0 else (t - 0.5) * 2
    a, b = _SCALE_STOPS[seg], _SCALE_STOPS[seg + 1]
    r, g, bl = (round(a[k] + (b[k] - a[k]) * u) for k in range(3))
    return f"#{r:02x}{g:02x}{bl:02x}"


def _rank_positions(values: Sequence[float]) -> list[float | None]:
    """Rank within the column, in [0, 1]: robust to the few-orders-of-magnitude spread across layers and lambdas."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return [None] * len(values)
    if len(finite) == 1 or finite[0] == finite[-1]:
        return [0.0 if math.isfinite(v) else None for v in values]
    index: dict[float, list[int]] = defaultdict(list)
    for i, v in enumerate(finite):
        index[v].append(i)
    denom = len(finite) - 1
    return [(sum(index[v]) / len(index[v]) / denom) if math.isfinite(v) else None for v in values]


def _sort_value(value: Any, numeric: bool) -> str:
    if numeric:
        f = _as_float(value)
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"  # what JavaScript's Number() parses back
        return "" if math.isnan(f) else repr(f)
    return "" if _is_missing(value) else str(value)


def _info_value(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        text = ", ".join(_fmt_g(v) if isinstance(v, float) else str(v) for v in value)
    elif isinstance(value, float):
        text = _fmt_g(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    else:
        text = json.dumps(value, default=str, sort_keys=True)
    escaped = html.escape(text)
    # Hashes and paths read better in monospace; ordinary words do not.
    looks_code = (" " not in text and len(text) >= 12) or isinstance(value, dict)
    return f"<code>{escaped}</code>" if looks_code else escaped


def _finite(values: Iterable[Any]) -> list[float]:
    return [f for f in (_as_float(v) for v in values) if math.isfinite(f)]


def _sae_label(row: dict) -> str:
    arch = row.get("architecture", "jumprelu")
    sparsity = {"jumprelu": "λ", "topk": "k=", "relu": "L1 "}.get(arch, "") + _fmt_g(row.get("sparsity"))
    prefix = "" if arch == "jumprelu" else f"{_ARCH_NAMES.get(arch, arch)} · "
    return f"{prefix}L{_fmt_int(row.get('layer'))} · w{_fmt_int(row.get('width'))} · {sparsity}"


def _headline_cards(rows: list[dict]) -> str:
    if not rows:
        return '<div class="empty">No evaluated SAEs.</div>'
    sites = _sites(rows)
    colors = _site_colors(sites)
    fmt_dl, fmt_l0, fmt_fvu, fmt_pct = _fmt_fixed(4), _fmt_fixed(1), _fmt_fixed(3), _fmt_pct(1)
    cards = []
    groups = [("all sites", rows, "#4b5563")] if len(sites) > 1 else []
    groups += [(s, [r for r in rows if str(r.get("site")) == s], colors[s]) for s in sites]
    for name, rs, color in groups:
        with_dl = [r for r in rs if math.isfinite(_as_float(r.get("delta_loss")))]
        best = min(with_dl, key=lambda r: _as_float(r["delta_loss"])) if with_dl else None
        worst = max(with_dl, key=lambda r: _as_float(r["delta_loss"])) if with_dl else None

        def mean(key: str) -> float:
            vals = _finite(r.get(key) for r in rs)
            return sum(vals) / len(vals) if vals else math.nan

        def sae(r: dict | None) -> str:
            if r is None:
                return ""
            prefix = f"{r.get('site')} " if name == "all sites" else ""
            return f"<small>{html.escape(prefix + _sae_label(r))}</small>"

        items = [
            ("best delta loss", (fmt_dl(best["delta_loss"]) if best else _NA) + sae(best)),
            ("worst delta loss", (fmt_dl(worst["delta_loss"]) if worst else _NA) + sae(worst)),
            ("mean L0", fmt_l0(mean("l0"))),
            ("mean FVU", fmt_fvu(mean("fvu"))),
            ("mean dead", fmt_pct(mean("dead_frac"))),
        ]
        kv = "".join(f'<div class="k">{k}</div><div class="v">{v}</div>' for k, v in items)
        cards.append(f'<div class="card" style="--site:{color}"><h3>{html.escape(name)}'
                     f'<span>{len(rs)} SAE{"s" if len(rs) != 1 else ""}</span></h3>'
                     f'<div class="kv">{kv}</div></div>')
    return f'<div class="cards">{"".join(cards)}</div>'


def _info_block(rows: list[dict], suite_info: dict) -> str:
    items = [(str(k), _info_value(v)) for k, v in suite_info.items()]
    derived = [
        ("SAEs in report", f"{len(rows):,}"),
        ("sites", ", ".join(_sites(rows)) or _NA),
        ("layers", ", ".join(_fmt_int(v) for v in _unique_numbers(r.get("layer") for r in rows)) or _NA),
        ("widths", ", ".join(_fmt_int(v) for v in _unique_numbers(r.get("width") for r in rows)) or _NA),
        ("lambdas", ", ".join(_fmt_g(v) for v in _unique_numbers(r.get("lambda") for r in _jumprelu(rows)))
         or _NA),
        ("architectures", ", ".join(_ARCH_NAMES.get(a, a) for a in sorted(
            {str(r.get("architecture")) for r in rows}, key=_arch_key)) or _NA),
    ]
    eval_tokens = _finite(r.get("n_tokens") for r in rows)
    if eval_tokens:
        derived.append(("eval tokens / SAE", _fmt_count(max(eval_tokens))))
    have = {k for k, _ in items}
    items += [(k, html.escape(v)) for k, v in derived if k not in have]
    cells = "".join(f"<div><dt>{html.escape(k)}</dt><dd>{v}</dd></div>" for k, v in items)
    return f'<dl class="info">{cells}</dl>'


def _metrics_html_table(rows: list[dict]) -> str:
    if not rows:
        return '<div class="tablewrap"><div class="empty">No evaluated SAEs.</div></div>'
    columns = list(_TABLE_SPEC) + [c for c in _HTML_EXTRA_SPEC if any(c.key in r for r in rows)]
    base_cells = format_table_rows(rows)
    scales = {c.key: _rank_positions([_as_float(r.get(c.key)) for r in rows]) for c in columns if c.scaled}
    head = "".join(
        f'<th class="{"num" if c.numeric else ""}" title="click to sort">{html.escape(c.header)}</th>'
        for c in columns)
    body = []
    for i, (row, cells) in enumerate(zip(rows, base_cells)):
        tds = []
        for j, col in enumerate(columns):
            text = cells[j] if j < len(cells) else col.fmt(row.get(col.key))
            classes = [cls for cls in ("num" if col.numeric else "", col.css, "na" if text == _NA else "") if cls]
            style = ""
            if col.key in scales and scales[col.key][i] is not None:
                classes.append("scaled")
                style = f' style="background:{_scale_color(scales[col.key][i])}"'
            title = f' title="{html.escape(text)}"' if col.css == "path" else ""
            tds.append(f'<td class="{" ".join(classes)}" data-v="{html.escape(_sort_value(row.get(col.key), col.numeric))}"'
                       f'{style}{title}>{html.escape(text)}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (f'<div class="tablewrap"><table class="sortable" id="metrics"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _figure(name: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}" loading="lazy">'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def _index_html(rows: list[dict], title: str, suite_info: dict) -> str:
    plots = (
        f"<h2>By layer (JumpReLU SAEs)</h2>"
        f"{_figure('delta_loss_by_layer.png', 'Delta loss: increase in next-token cross-entropy when the SAE reconstruction is spliced in, per layer; one panel per lambda.')}"
        f"{_figure('l0_by_layer.png', 'L0: mean number of active latents per token, per layer; one panel per lambda.')}"
        f"{_figure('fvu_by_layer.png', 'FVU: fraction of activation variance the reconstruction leaves unexplained, per layer; one panel per lambda.')}"
        f"<h2>Sparsity vs fidelity (JumpReLU SAEs)</h2><div class=\"grid2\">"
        f"{_figure('l0_vs_delta_loss.png', 'Delta loss against L0; faint lines join the lambdas of one (site, layer, width).')}"
        f"{_figure('l0_vs_fvu.png', 'FVU against L0; faint lines join the lambdas of one (site, layer, width).')}"
        f"</div>"
        f"{_architecture_section(rows)}"
        f"<h2>Training and latent health</h2>"
        f"{_figure('training_curves.png', 'Training loss, L0 and batch FVU against tokens seen, one faint line per SAE.')}"
        f"{_figure('firing_hist.png', 'How often latents fire (log10 of the fraction of tokens), summed over every SAE of a site; right of the dashed line is dense.')}"
    )
    legend = ('<p class="legend">Click a column header to sort. FVU and delta loss cells are coloured by rank '
              'within the column: lower <span class="swatch"></span> higher.</p>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>{html.escape(title)}</h1>
<div class="sub">JumpReLU SAE suite report</div>
{_info_block(rows, suite_info)}
<h2>Headline numbers</h2>
{_headline_cards(rows)}
{plots}
<h2>All SAEs</h2>
{legend}
{_metrics_html_table(rows)}
</main>
<script>{_JS}</script>
</body>
</html>
"""


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def render_report(rows: list[dict], train_logs: list[dict], out_dir: pathlib.Path, *, title: str,
                  suite_info: dict) -> list[pathlib.Path]:
    """Write metrics.parquet, the plots and index.html into out_dir; index.html last, once what it links exists."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted_rows(_with_defaults({k: _plain(v) for k, v in r.items()}) for r in rows)
    jump = _jumprelu(rows)
    train_logs = [{k: _plain(v) for k, v in rec.items()} for rec in train_logs]

    written: list[pathlib.Path] = []
    parquet_path = out_dir / "metrics.parquet"
    pq.write_table(_metrics_table(rows), parquet_path)
    written.append(parquet_path)

    with matplotlib.rc_context(_STYLE):
        written.append(_plot_by_layer(jump, "delta_loss", "Delta loss by layer", out_dir / "delta_loss_by_layer.png"))
        written.append(_plot_by_layer(jump, "l0", "L0 by layer", out_dir / "l0_by_layer.png"))
        written.append(_plot_by_layer(jump, "fvu", "FVU by layer", out_dir / "fvu_by_layer.png"))
        written.append(_plot_pareto(jump, "fvu", "FVU vs L0", out_dir / "l0_vs_fvu.png"))
        written.append(_plot_pareto(jump, "delta_loss", "Delta loss vs L0", out_dir / "l0_vs_delta_loss.png"))
        if _n_architectures(rows) > 1:
            written.append(_plot_architectures(rows, out_dir / ARCHITECTURES_PNG))
        written.append(_plot_training(train_logs, out_dir / "training_curves.png"))
        written.append(_plot_firing(rows, out_dir / "firing_hist.png"))

    index_path = out_dir / "index.html"
    index_path.write_text(_index_html(rows, title, dict(suite_info or {})), encoding="utf-8")
    written.append(index_path)
    return written
