"""The two baselines the JumpReLU paper compares against, trained by the same trainer on the same stream.

ReLU + L1 is the classic SAE (Bricken et al. 2023; with unit-norm decoder rows the L1 of f equals the
decoder-norm-weighted L1 of Anthropic's later recipe). TopK (Gao et al. 2024) keeps the k largest
pre-activations, so its sparsity is set by k rather than by a penalty.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import SparseAutoencoder
from .sparse_step import Pattern, sparse_forward


class ReLUSAE(SparseAutoencoder):
    """f = ReLU(z), trained with lambda * sum_latents f (f >= 0, so that is its L1 norm).

    Also a JumpReLU SAE with every threshold at 0, which is how it is written to Gemma Scope's params.npz.
    """

    architecture = "relu"
    display_name = "ReLU + L1"
    sparsity_field = "l1_coefficients"
    setting_prefix = "relu_l1_"
    sparsity_symbol = "L1 "
    saelens_architecture = "standard"
    gemma_scope_form = True

    @classmethod
    def for_sweep(cls, d_in: int, width: int, sparsity: float, cfg: Any,
                  generator: torch.Generator) -> "ReLUSAE":
        return cls(d_in, width, generator=generator)

    def activation(self, z: Tensor) -> Tensor:
        return torch.relu(z)

    def training_loss(self, x: Tensor, coefficient: float) -> tuple[dict[str, Tensor], Tensor]:
        f = self.activation(self.pre_acts(x))
        mse = self._mse(self.decode(f), x)
        sparsity = coefficient * f.sum(-1).mean()
        l0 = (f > 0).sum(-1).float().mean()
        return {"loss": mse + sparsity, "mse": mse, "sparsity": sparsity, "l0": l0}, f

    def sparse_pattern(self, z: Tensor) -> Pattern:
        rows, cols = torch.where(z > 0)
        return Pattern(rows, cols, z[rows, cols], torch.ones_like(rows, dtype=torch.bool))

    def sparse_training_loss(self, x: Tensor, coefficient: float) -> tuple[dict[str, Tensor], Tensor]:
        x_hat, f, l0, fired = sparse_forward(self, x)
        mse = self._mse(x_hat, x)
        sparsity = coefficient * f.sum() / x.shape[0]
        return {"loss": mse + sparsity, "mse": mse, "sparsity": sparsity, "l0": l0}, fired


class TopKSAE(SparseAutoencoder):
    """f = ReLU(TopK_k(z)): exactly the k largest pre-activations (those > 0) survive, so L0 <= k.

    The gradient reaches only the selected pre-activations; the loss is the reconstruction error alone.
    """

    architecture = "topk"
    display_name = "TopK"
    sparsity_field = "topk_ks"
    setting_prefix = "topk_"
    sparsity_symbol = "k="
    coefficient_warms_up = False
    saelens_architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int, generator: torch.Generator | None = None) -> None:
        super().__init__(d_in, d_sae, generator=generator, k=k)

    @classmethod
    def for_sweep(cls, d_in: int, width: int, sparsity: float, cfg: Any,
                  generator: torch.Generator) -> "TopKSAE":
        return cls(d_in, width, k=int(sparsity), generator=generator)

    @classmethod
    def setting_slug(cls, sparsity: float) -> str:
        return f"{cls.setting_prefix}{int(sparsity)}"

    def saelens_fields(self) -> dict[str, Any]:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def hyper_from_saelens(cls, cfg: Any, where: str) -> dict[str, Any]:
        if not isinstance(cfg.get("k"), int):
            raise ValueError(f"{where}: a topk SAE with no k")
        return {"k": cfg["k"]}

    def _set_hyper(self, k: int = 0) -> None:
        if not 0 < int(k) <= self.d_sae:
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {k}")
        self.k = int(k)

    def hyperparams(self) -> dict[str, Any]:
        return {"k": self.k}

    def activation(self, z: Tensor) -> Tensor:
        values, indices = z.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(z).scatter(-1, indices, torch.relu(values))

    def training_loss(self, x: Tensor, coefficient: float) -> tuple[dict[str, Tensor], Tensor]:
        f = self.activation(self.pre_acts(x))
        mse = self._mse(self.decode(f), x)
        l0 = (f > 0).sum(-1).float().mean()
        return {"loss": mse, "mse": mse, "sparsity": torch.zeros_like(mse), "l0": l0}, f

    def sparse_pattern(self, z: Tensor) -> Pattern:
        """The k selected latents of each row, in latent order (a CSR pattern); those with z <= 0 are
        selected but inactive, as ReLU leaves them."""
        values, cols = z.topk(self.k, dim=-1, sorted=False)
        cols, order = cols.sort(-1)
        values = values.gather(-1, order).flatten()
        rows = torch.arange(z.shape[0], device=z.device).repeat_interleave(self.k)
        return Pattern(rows, cols.flatten(), values, values > 0)

    def sparse_training_loss(self, x: Tensor, coefficient: float) -> tuple[dict[str, Tensor], Tensor]:
        x_hat, _, l0, fired = sparse_forward(self, x)
        mse = self._mse(x_hat, x)
        return {"loss": mse, "mse": mse, "sparsity": torch.zeros_like(mse), "l0": l0}, fired
