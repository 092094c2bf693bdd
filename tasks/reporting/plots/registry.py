"""Every figure of the report, once: its file, its caption, the function that draws it and when it applies,
grouped under the page's headings in page order. `render_report` draws what this lists and the page shows
what it lists, so a new figure is one entry here."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

from ..formatting import architectures_in
from ..schema import jumprelu_rows
from .common import STYLE
from .health import plot_firing, plot_training
from .splitting import SPLITTING_FILE, plot_splitting
from .sweeps import plot_architectures, plot_by_layer, plot_pareto
from .transfer import TRANSFER_FILE, plot_transfer


@dataclass(frozen=True)
class ReportData:
    """What the figures are drawn from: plain, defaulted rows in suite order, and plain training-log records."""

    rows: list[dict]
    train_logs: list[dict]
    #: the inspect stage's splitting.parquet rows with their site and layer (none without two widths)
    splitting: list[dict] = ()
    #: the evaluation rows of the further models of `evaluate.models` (`rows` are the suite model's)
    transfer: list[dict] = ()

    @property
    def jumprelu(self) -> list[dict]:
        return jumprelu_rows(self.rows)


def _always(data: ReportData) -> bool:
    return True


def _splitting(data: ReportData) -> bool:
    return bool(data.splitting)


def _transfer(data: ReportData) -> bool:
    return bool(data.transfer)


def _several_architectures(data: ReportData) -> bool:
    """A comparison across architectures needs at least two of them."""
    return len(architectures_in(data.rows)) > 1


@dataclass(frozen=True)
class Plot:
    """One figure: the PNG it writes into report/, its caption on the page, how it is drawn, and whether this
    suite gets it at all."""

    file: str
    caption: str
    draw: Callable[[ReportData, pathlib.Path], pathlib.Path]
    applies: Callable[[ReportData], bool] = _always


@dataclass(frozen=True)
class Section:
    """A heading of the page and the figures under it."""

    heading: str
    plots: tuple[Plot, ...]
    #: figures side by side (two columns on a wide screen)
    grid: bool = False

    def shown(self, data: ReportData) -> list[Plot]:
        return [p for p in self.plots if p.applies(data)]


SECTIONS: tuple[Section, ...] = (
    Section("By layer (JumpReLU SAEs)", (
        Plot("delta_loss_by_layer.png",
             "Delta loss: increase in next-token cross-entropy when the SAE reconstruction is spliced in, per "
             "layer; one panel per lambda.",
             lambda d, p: plot_by_layer(d.jumprelu, "delta_loss", "Delta loss by layer", p)),
        Plot("l0_by_layer.png",
             "L0: mean number of active latents per token, per layer; one panel per lambda.",
             lambda d, p: plot_by_layer(d.jumprelu, "l0", "L0 by layer", p)),
        Plot("fvu_by_layer.png",
             "FVU: fraction of activation variance the reconstruction leaves unexplained, per layer; one panel "
             "per lambda.",
             lambda d, p: plot_by_layer(d.jumprelu, "fvu", "FVU by layer", p)),
    )),
    Section("Sparsity vs fidelity (JumpReLU SAEs)", (
        Plot("l0_vs_delta_loss.png",
             "Delta loss against L0; faint lines join the lambdas of one (site, layer, width).",
             lambda d, p: plot_pareto(d.jumprelu, "delta_loss", "Delta loss vs L0", p)),
        Plot("l0_vs_fvu.png",
             "FVU against L0; faint lines join the lambdas of one (site, layer, width).",
             lambda d, p: plot_pareto(d.jumprelu, "fvu", "FVU vs L0", p)),
    ), grid=True),
    Section("JumpReLU against its baselines", (
        Plot("architectures_l0_vs_fidelity.png",
             "FVU and delta loss against L0 for every architecture trained on the same data; faint lines join "
             "the sparsity sweep of one (architecture, layer, width).",
             lambda d, p: plot_architectures(d.rows, p), applies=_several_architectures),
    )),
    Section("Feature splitting across widths", (
        Plot(SPLITTING_FILE,
             "For every latent of a wider SAE, the decoder cosine to its nearest latent of the next narrower SAE "
             "of the same setting: near 1, the same feature; right of the dashed line, one of the "
             "splits of a narrow latent; low, new at that width.",
             lambda d, p: plot_splitting(d.splitting, p), applies=_splitting),
    )),
    Section("Base to instruction-tuned transfer", (
        Plot(TRANSFER_FILE,
             "Delta loss and FVU of the same SAEs on the model they were trained on (solid) and on each further "
             "evaluation model, on its own text (dashed; an instruction-tuned variant on chats through its chat "
             "template), the mean over the SAEs of each (site, layer). Close lines: the SAEs transfer.",
             lambda d, p: plot_transfer(d.rows, d.transfer, p), applies=_transfer),
    )),
    Section("Training and latent health", (
        Plot("training_curves.png",
             "Training loss, L0 and batch FVU against tokens seen, one faint line per SAE.",
             lambda d, p: plot_training(d.train_logs, p)),
        Plot("firing_hist.png",
             "How often latents fire (log10 of the fraction of tokens), summed over every SAE of a site; right "
             "of the dashed line is dense.",
             lambda d, p: plot_firing(d.rows, p)),
    )),
)

PLOTS: tuple[Plot, ...] = tuple(p for s in SECTIONS for p in s.plots)

#: the figures every report has, whatever its suite
PLOT_FILES: tuple[str, ...] = tuple(p.file for p in PLOTS if p.applies is _always)


def draw_plots(data: ReportData, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Every figure that applies to this suite, in page order, under the report's matplotlib style."""
    with matplotlib.rc_context(STYLE):
        return [p.draw(data, out_dir / p.file) for s in SECTIONS for p in s.shown(data)]
