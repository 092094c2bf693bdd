"""The JumpReLU SAE and the straight-through estimators that let its threshold learn (DESIGN section 5).

The threshold enters the forward pass only through a step function, whose true derivative is zero almost
everywhere; the estimators below replace it with a rectangle-kernel density estimate of width `bandwidth`,
as Gemma Scope does. Everything else has its ordinary gradient.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _kernel_sum(z: Tensor, threshold: Tensor, bandwidth: float, weight: Tensor) -> Tensor:
    """sum over the batch of weight * K((z - theta) / eps), with K(u) = 1 on |u| < 1/2 (open, as the paper).

    Both pseudo-derivatives are this sum with a different weight; threshold gradients sum over every
    leading (batch) dimension.
    """
    window = (z - threshold).abs() < 0.5 * bandwidth
    summed = torch.where(window, weight, 0.0).reshape(-1, z.shape[-1]).sum(0)
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
            grad_theta = _kernel_sum(z, threshold, eps, -(threshold / eps) * grad_out)
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
            grad_theta = _kernel_sum(z, threshold, eps, -(1.0 / eps) * grad_out)
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
            grad_theta = _kernel_sum(z, threshold, eps, -(threshold * grad_f + grad_h) / eps)
        return grad_z, grad_theta, None


def jumprelu(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    return JumpReLUFunction.apply(z, threshold, bandwidth)


def heaviside(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    return HeavisideFunction.apply(z, threshold, bandwidth)


def jumprelu_and_heaviside(z: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
    return JumpReLUAndHeavisideFunction.apply(z, threshold, bandwidth)


class JumpReLUSAE(nn.Module):
    """A JumpReLU sparse autoencoder, in its training form or its released (folded) form.

    `apply_b_dec_to_input` tells the two apart: training subtracts b_dec before encoding (on activations
    divided by C); the folded release has that bias and C baked into b_enc, b_dec and threshold, so it
    eats raw activations with a plain affine encoder, which is what Gemma Scope and SAELens load.
    """

    PARAM_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        threshold_init: float = 0.001,
        bandwidth: float = 0.001,
        generator: torch.Generator | None = None,
    ) -> None:
        if d_in <= 0 or d_sae <= 0:
            raise ValueError(f"d_in and d_sae must be positive, got {d_in}, {d_sae}")
        w_dec = torch.empty(d_sae, d_in, dtype=torch.float32)
        nn.init.kaiming_uniform_(w_dec, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        params = {
            "W_enc": w_dec.T.contiguous(),
            "W_dec": w_dec,
            "b_enc": torch.zeros(d_sae, dtype=torch.float32),
            "b_dec": torch.zeros(d_in, dtype=torch.float32),
            "threshold": torch.full((d_sae,), float(threshold_init), dtype=torch.float32),
        }
        super().__init__()
        self._install(params, bandwidth=bandwidth, apply_b_dec_to_input=True)

    def _install(self, params: Mapping[str, Tensor], *, bandwidth: float, apply_b_dec_to_input: bool) -> None:
        missing = [n for n in self.PARAM_NAMES if n not in params]
        if missing:
            raise KeyError(f"missing SAE tensors: {missing}")
        d_in, d_sae = params["W_enc"].shape
        expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
                    "threshold": (d_sae,)}
        for name, shape in expected.items():
            if tuple(params[name].shape) != shape:
                raise ValueError(f"{name} has shape {tuple(params[name].shape)}, expected {shape}")
        self.d_in = int(d_in)
        self.d_sae = int(d_sae)
        self.bandwidth = float(bandwidth)
        self.apply_b_dec_to_input = apply_b_dec_to_input
        for name in self.PARAM_NAMES:
            value = torch.as_tensor(params[name]).detach().to(torch.float32, copy=True).contiguous()
            setattr(self, name, nn.Parameter(value))

    def pre_acts(self, x: Tensor) -> Tensor:
        bias = self.b_enc
        if self.apply_b_dec_to_input:
            # (x - b_dec) @ W_enc regrouped: b_dec's gradient then costs one vector-matrix product instead of
            # a [B, d_in] x [d_in, d_sae] matmul, a sixth of a dense step.
            bias = bias - self.b_dec @ self.W_enc
        return F.linear(x, self.W_enc.T, bias)

    def encode(self, x: Tensor) -> Tensor:
        return jumprelu(self.pre_acts(x), self.threshold, self.bandwidth)

    def decode(self, f: Tensor) -> Tensor:
        return F.linear(f, self.W_dec.T, self.b_dec)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    def loss_and_outputs(self, x: Tensor, lam: float) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The training loss plus x_hat and f, so a trainer can log without a second forward pass."""
        z = self.pre_acts(x)
        f, h = jumprelu_and_heaviside(z, self.threshold, self.bandwidth)
        x_hat = self.decode(f)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        l0 = h.sum(-1).mean()
        return {"loss": mse + lam * l0, "mse": mse, "l0": l0}, x_hat, f

    def loss(self, x: Tensor, lam: float) -> dict[str, Tensor]:
        return self.loss_and_outputs(x, lam)[0]

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Rows are renormalised after each step, so a gradient along a row would only be undone: drop it."""
        grad = self.W_dec.grad
        if grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
        grad -= (grad * unit).sum(dim=1, keepdim=True) * unit

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit decoder rows pin the scale of each latent, so the L0 penalty cannot be dodged by rescaling."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    @torch.no_grad()
    def clamp_threshold(self) -> None:
        """A negative threshold would let z <= 0 through as an active latent."""
        self.threshold.clamp_(min=0.0)

    @torch.no_grad()
    def folded(self, scale: float) -> "JumpReLUSAE":
        """The same SAE expressed on raw activations x_raw = scale * x.

        With z' = x_raw @ W_enc + b_enc' we want z' = scale * z, so b_enc' = C b_enc - C (b_dec @ W_enc)
        when b_dec was subtracted from the input (nothing to remove otherwise); then the active set is
        unchanged if theta' = C theta, f' = C f, and x_hat' = C x_hat once b_dec' = C b_dec.
        """
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        c = float(scale)
        b_enc = c * self.b_enc
        if self.apply_b_dec_to_input:
            b_enc = b_enc - c * (self.b_dec @ self.W_enc)
        tensors = {
            "W_enc": self.W_enc,
            "W_dec": self.W_dec,
            "b_enc": b_enc,
            "b_dec": c * self.b_dec,
            "threshold": c * self.threshold,
        }
        return self.from_tensors(tensors, apply_b_dec_to_input=False, bandwidth=self.bandwidth)

    def state_tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).detach() for name in self.PARAM_NAMES}

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, Tensor], apply_b_dec_to_input: bool = False, bandwidth: float = 0.001
    ) -> "JumpReLUSAE":
        """Copies of `tensors` (as float32, on their device); no random init, so loading leaves RNGs alone."""
        sae = cls.__new__(cls)
        nn.Module.__init__(sae)
        sae._install(tensors, bandwidth=bandwidth, apply_b_dec_to_input=apply_b_dec_to_input)
        return sae

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}, apply_b_dec_to_input={self.apply_b_dec_to_input}"
