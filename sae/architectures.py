"""Which SAE class each architecture name means, and the points of a sweep.

One table, read by the trainer (to build), the exporters (to load) and the stages (to name folders), so a
new architecture is added in one place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import SparseAutoencoder
from .baselines import ReLUSAE, TopKSAE
from .config import TrainConfig
from .jumprelu import JumpReLUSAE

SAE_CLASSES: dict[str, type[SparseAutoencoder]] = {"jumprelu": JumpReLUSAE, "topk": TopKSAE, "relu": ReLUSAE}


@dataclass(frozen=True)
class SweepPoint:
    """One SAE of a sweep: its architecture, width and sparsity setting (lambda, k or L1 coefficient)."""

    architecture: str
    width: int
    sparsity: float

    @property
    def slug(self) -> str:
        """The folder name of its sparsity setting; JumpReLU keeps DESIGN's `lambda_{λ}`."""
        if self.architecture == "jumprelu":
            return f"lambda_{self.sparsity:g}"
        if self.architecture == "topk":
            return f"topk_{int(self.sparsity)}"
        return f"relu_l1_{self.sparsity:g}"


def sweep_points(cfg: TrainConfig) -> list[SweepPoint]:
    """Architectures, then widths, then sparsity settings, in config order: the order of the returned SAEs."""
    return [SweepPoint(arch, width, s) for arch in cfg.architectures for width in cfg.widths
            for s in cfg.sparsities(arch)]


def build_sae(point: SweepPoint, d_in: int, cfg: TrainConfig, generator: torch.Generator) -> SparseAutoencoder:
    if point.architecture == "jumprelu":
        return JumpReLUSAE(d_in, point.width, cfg.threshold_init, cfg.bandwidth, generator=generator)
    if point.architecture == "topk":
        return TopKSAE(d_in, point.width, k=int(point.sparsity), generator=generator)
    return ReLUSAE(d_in, point.width, generator=generator)
