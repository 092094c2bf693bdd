"""The JumpReLU SAE and the straight-through estimators that let its threshold learn (docs/architecture.md).

The threshold enters the forward pass only through a step function, whose true derivative is zero almost
everywhere; the estimators below replace it with a rectangle-kernel density estimate of width `bandwidth`,
as Gemma Scope does. Everything else has its ordinary gradient.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import SparseAutoencoder
from .sparse_step import Pattern, sparse_forward


def _kernel_window(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """K((z - theta) / eps) as a mask, with K(u) = 1 on |u| < 1/2 (open, as the paper)."""
    return (z - threshold).abs_() < 0.5 * bandwidth


def _window_sum(window: Tensor, grad: Tensor, threshold: Tensor) -> Tensor:
    """sum over the batch of grad * K. Each pseudo-derivative is such a sum times a per-latent factor,
    applied after the sum: a [d_sae] product instead of several [B, d_sae] temporaries (the STE backward
    was a quarter of a CPU step before). Threshold gradients sum over every leading (batch) dimension."""
    summed = torch.where(window, grad, 0.0).reshape(-1, window.shape[-1]).sum(0)
    return summed.reshape(threshold.shape)


class JumpReLUFunction(torch.autograd.Function):
    """f = z * H(z - theta), strict (z == theta gives 0).

    df/dz = H(z - theta) exactly; df/dtheta := -(theta / eps) K((z - theta) / eps).
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad_out * (z > threshold).to(grad_out.dtype) if ctx.needs_input_grad[0] else None
        grad_theta = None
        if ctx.needs_input_grad[1]:
            grad_theta = -(threshold / eps) * _window_sum(_kernel_window(z, threshold, eps), grad_out, threshold)
        return grad_z, grad_theta, None


class HeavisideFunction(torch.autograd.Function):
    """H(z - theta), strict, for the L0 penalty.

    No gradient reaches z: the sparsity penalty acts on the threshold only, so it cannot shrink activations
    the way an L1 penalty would. dH/dtheta := -(1 / eps) K((z - theta) / eps).
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, Tensor | None, None]:
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = None
        if ctx.needs_input_grad[1]:
            grad_theta = -(1.0 / eps) * _window_sum(_kernel_window(z, threshold, eps), grad_out, threshold)
        return None, grad_theta, None


class JumpReLUAndHeavisideFunction(torch.autograd.Function):
    """Both of the above on the same z in one pass: (f, H). The training loss needs both, and sharing the
    mask and the kernel window saves a third of the elementwise work of a step. Gradients are exactly the
    sum of the two estimators'."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
        h = (z > threshold).to(z.dtype)
        ctx.save_for_backward(z, threshold, h)
        ctx.bandwidth = bandwidth
        return z * h, h

    @staticmethod
    def backward(ctx: Any, grad_f: Tensor, grad_h: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        z, threshold, h = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad_f * h if ctx.needs_input_grad[0] else None
        grad_theta = None
        if ctx.needs_input_grad[1]:
            window = _kernel_window(z, threshold, eps)
            grad_theta = -(threshold * _window_sum(window, grad_f, threshold) + _window_sum(window, grad_h, threshold)) / eps
        return grad_z, grad_theta, None


def jumprelu(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    return JumpReLUFunction.apply(z, threshold, bandwidth)


def heaviside(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    return HeavisideFunction.apply(z, threshold, bandwidth)


def jumprelu_and_heaviside(z: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
    return JumpReLUAndHeavisideFunction.apply(z, threshold, bandwidth)


class JumpReLUSAE(SparseAutoencoder):
    """A JumpReLU SAE (Rajamanoharan et al. 2024): f = z * H(z - theta) with a learned per-latent threshold,
    trained with an L0 penalty through the straight-through estimators above."""

    architecture = "jumprelu"
    display_name = "JumpReLU"
    sparsity_field = "lambdas"
    setting_prefix = "lambda_"
    sparsity_symbol = "λ"
    saelens_architecture = "jumprelu"
    gemma_scope_form = True
    EXTRA_PARAMS = ("threshold",)

    def __init__(self, d_in: int, d_sae: int, threshold_init: float = 0.001, bandwidth: float = 0.001,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(d_in, d_sae, generator=generator, init={"threshold_init": threshold_init},
                         bandwidth=bandwidth)

    @classmethod
    def for_sweep(cls, d_in: int, width: int, sparsity: float, cfg: Any,
                  generator: torch.Generator) -> "JumpReLUSAE":
        return cls(d_in, width, cfg.threshold_init, cfg.bandwidth, generator=generator)

    @classmethod
    def _init_extra(cls, d_sae: int, threshold_init: float = 0.001) -> dict[str, Tensor]:
        if threshold_init < 0:
            raise ValueError(f"threshold_init must be >= 0, got {threshold_init}")
        return {"threshold": torch.full((d_sae,), float(threshold_init), dtype=torch.float32)}

    def _set_hyper(self, bandwidth: float = 0.001) -> None:
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth}")
        self.bandwidth = float(bandwidth)

    def hyperparams(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth}

    def activation(self, z: Tensor) -> Tensor:
        return jumprelu(z, self.threshold, self.bandwidth)

    def training_loss(self, x: Tensor, coefficient: float) -> tuple[dict[str, Tensor], Tensor]:
        """mean_batch(||x - x_hat||^2 + lambda * ||f||_0); the L0 term reaches only the threshold."""
        f, h = jumprelu_and_heaviside(self.pre_acts(x), self.threshold, self.bandwidth)
        mse = self._mse(self.decode(f), x)
        l0 = h.sum(-1).mean()
        sparsity = coefficient * l0
        return {"loss": mse + sparsity, "mse": mse, "sparsity": sparsity, "l0": l0}, f

    def sparse_pattern(self, z: Tensor) -> Pattern:
        """Active latents and the kernel window both lie in z > theta - eps (half a bandwidth of room for
        rounding); the exact tests are then the dense step's, on the same numbers."""
        rows, cols = torch.where(z > self.threshold - self.bandwidth)
        values, threshold = z[rows, cols], self.threshold[cols]
        return Pattern(rows, cols, values, values > threshold, _kernel_window(values, threshold, self.bandwidth))

    def sparse_training_loss(self, x: Tensor, coefficient: float) -> tuple[dict[str, Tensor], Tensor]:
        x_hat, _, l0, fired = sparse_forward(self, x)
        mse = self._mse(x_hat, x)
        sparsity = coefficient * l0
        return {"loss": mse + sparsity, "mse": mse, "sparsity": sparsity, "l0": l0}, fired

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        self.clamp_threshold()

    @torch.no_grad()
    def clamp_threshold(self) -> None:
        """A negative threshold would let z <= 0 through as an active latent."""
        self.threshold.clamp_(min=0.0)

    def _fold_extra(self, scale: float) -> dict[str, Tensor]:
        return {"threshold": scale * self.threshold}
