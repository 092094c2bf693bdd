"""Colours the plots and the headline cards share, so a site or an architecture has one colour everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .formatting import arch_rank

SITE_COLORS = {"res": "#1f77b4", "att": "#ff7f0e", "mlp": "#2ca02c"}
EXTRA_COLORS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")

# Indexed by `sae.registry.ARCHITECTURES` order: jumprelu, topk, relu as the report has always drawn them,
# then the other extra colours, for architectures the registry gains later.
ARCH_PALETTE = ("#1f77b4", "#d62728", "#7f7f7f", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


def site_colors(sites: Sequence[str]) -> dict[str, str]:
    """The three known sites keep their colours; any other site takes the next unused one."""
    colors, extra = {}, iter(EXTRA_COLORS * (1 + len(sites) // len(EXTRA_COLORS)))
    for s in sites:
        colors[s] = SITE_COLORS.get(s) or next(extra)
    return colors


def arch_color(arch: Any) -> str:
    return ARCH_PALETTE[arch_rank(arch) % len(ARCH_PALETTE)]
