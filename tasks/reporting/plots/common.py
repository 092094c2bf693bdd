"""What every report figure shares: its style, its canvas, how it is saved, how it says it has no data, and
how its axes choose between linear and log scales."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Iterable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation

DPI = 110
STYLE = {
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

METRIC_LABELS = {
    "delta_loss": "delta loss (nats/token)",
    "l0": "L0 (active latents/token)",
    "fvu": "FVU",
}

WIDTH_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
WIDTH_DASHES = ("-", "--", ":", "-.")


def new_figure(width: float, height: float) -> Figure:
    """Figures are built on their own Agg canvas, not through pyplot, so no global backend state is touched."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def no_data(ax, message: str) -> None:
    """A panel with nothing to draw still gets written, saying why, so the page never links a missing file."""
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="#888888", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


class PlainLogFormatter(LogFormatterSciNotation):
    """Labels the same log ticks matplotlib would, but as 0.06 / 200 rather than 6x10^-2 / 2x10^2."""

    def __call__(self, x, pos=None):
        label = super().__call__(x, pos)
        return f"{x:g}" if label else ""


def auto_log(ax, values: Iterable[float], axis: str) -> None:
    """Log scale only when every value is positive and they span more than a decade; otherwise keep it linear."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        target = ax.yaxis if axis == "y" else ax.xaxis
        target.set_major_formatter(PlainLogFormatter())
        target.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def width_styles(widths: Sequence[float]) -> dict[float, tuple[str, str]]:
    """A (marker, line style) per SAE width, so widths stay apart where colour already means site."""
    return {w: (WIDTH_MARKERS[i % len(WIDTH_MARKERS)], WIDTH_DASHES[i % len(WIDTH_DASHES)])
            for i, w in enumerate(widths)}
