"""The report's PNG figures: `registry` lists them; `sweeps` and `health` draw them on `common`'s canvas."""

from .registry import PLOT_FILES, PLOTS, SECTIONS, Plot, ReportData, Section, draw_plots

__all__ = ["PLOT_FILES", "PLOTS", "SECTIONS", "Plot", "ReportData", "Section", "draw_plots"]
