"""The points of a sweep: which SAEs one training unit builds, and what each is called on disk."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import SparseAutoencoder
from .config import TrainConfig
from .registry import architecture_class


@dataclass(frozen=True)
class SweepPoint:
    """One SAE of a sweep: its architecture, width and sparsity setting (lambda, k or L1 coefficient)."""

    architecture: str
    width: int
    sparsity: float

    @property
    def cls(self) -> type[SparseAutoencoder]:
        return architecture_class(self.architecture)

    @property
    def slug(self) -> str:
        """The folder name of its sparsity setting (`lambda_{λ}`, `topk_{k}`, `relu_l1_{c}`)."""
        return self.cls.setting_slug(self.sparsity)


def sweep_points(cfg: TrainConfig) -> list[SweepPoint]:
    """Architectures, then widths, then sparsity settings, in config order: the order of the returned SAEs."""
    return [SweepPoint(arch, width, s) for arch in cfg.architectures for width in cfg.widths
            for s in cfg.sparsities(arch)]


def build_sae(point: SweepPoint, d_in: int, cfg: TrainConfig, generator: torch.Generator) -> SparseAutoencoder:
    return point.cls.for_sweep(d_in, point.width, point.sparsity, cfg, generator)
