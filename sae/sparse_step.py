"""The sparse training step: of a step's five [B, d_in] x [d_in, W] matmuls only the encoder's forward must be
dense (docs/architecture.md, "The SAE math").

f has L0 nonzeros per row and dL/dz is zero wherever f is, so the decoder forward, dL/df, both weight
gradients and the biases' touch only the active latents; JumpReLU's threshold gradient needs dL/df only in
the kernel window, which is as sparse. One autograd Function does the whole SAE on that pattern with torch
library ops that run on CPU and CUDA: `embedding_bag` (gather-sum of rows) for the decoder forward and, over
the pattern grouped by latent, for both weight gradients; `sparse.sampled_addmm` for dL/df at the pattern's
entries; `index_add_` for per-latent sums. The dense step (each architecture's `training_loss`) stays the
reference: same pre-activations, same active set, same losses and gradients within float tolerance.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

#: per device type, the L0 / width up to which `auto` takes the sparse step. CPU: measured (BENCHMARKS.md,
#: "Issue 12"). Other devices are not measured yet, so `auto` stays dense there: on a GPU the gathers are
#: bound by memory bandwidth while the dense matmuls it saves run at tensor-core rates.
SPARSE_MAX_L0_FRACTION = {"cpu": 0.1}

Step = Literal["auto", "dense", "sparse"]


@dataclass
class Pattern:
    """The entries of the [B, W] pre-activations a sparse step touches, in row-major order (ascending rows,
    ascending latents within a row): z there, whether f is non-zero there (`active`), and for JumpReLU
    whether the threshold's kernel window holds it. Inactive entries carry f = 0 and get no dL/dz."""

    rows: Tensor
    cols: Tensor
    values: Tensor
    active: Tensor
    window: Tensor | None = None


def use_sparse(step: Step, last_l0: Tensor | None, width: int, device_type: str = "cpu") -> bool:
    """The step to take: `auto` goes sparse once the previous step's measured L0 is a small enough part of
    the width (the first step, with no measurement yet, is dense). A pure function of the run's state, so a
    resumed run chooses as the uninterrupted one did."""
    if step != "auto":
        return step == "sparse"
    limit = SPARSE_MAX_L0_FRACTION.get(device_type)
    return limit is not None and last_l0 is not None and float(last_l0) <= limit * width


def step_loss(sae: Any, x: Tensor, coefficient: float, sparse: bool) -> tuple[dict[str, Tensor], Tensor]:
    """(losses, fired): the training losses by the chosen step and which latents fired on this batch."""
    if sparse:
        return sae.sparse_training_loss(x, coefficient)
    losses, f = sae.training_loss(x, coefficient)
    return losses, (f.detach() != 0).any(0)


def sparse_forward(sae: Any, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_hat, f at the pattern's entries, L0 of the batch, fired latents) of `sae` on x by the sparse step.
    L0 carries the threshold's straight-through gradient (JumpReLU's penalty acts on it alone)."""
    threshold = getattr(sae, "threshold", None)
    return SparseSAEFunction.apply(sae, x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, threshold)


def _offsets(index: Tensor, n: int) -> Tensor:
    """Where each of the n groups starts once `index` is sorted (embedding_bag's bag offsets; empty groups
    allowed)."""
    counts = torch.bincount(index, minlength=n)
    return counts.cumsum(0) - counts


def _per_latent(cols: Tensor, values: Tensor, width: int) -> Tensor:
    return torch.zeros(width, dtype=values.dtype, device=values.device).index_add_(0, cols, values)


class SparseSAEFunction(torch.autograd.Function):
    """x -> (x_hat, f_p, l0, fired) for one SAE, with every tensor after the encoder matmul sparse.

    Backward, with g = dL/dx_hat [B, d_in] dense and p the pattern's entries:
      dL/df_p     = (g @ W_dec^T)_p  (+ any gradient reaching f_p directly, the L1 penalty's)
      dL/dz_p     = dL/df_p where active, else 0
      dL/dW_dec   = f^T g              dL/dW_enc = (x - b_dec)^T dL/dz     (gather-sums per latent)
      dL/db_enc   = sum_batch dL/dz    dL/db_dec = sum_batch g - W_enc dL/db_enc
      dL/dtheta   = -(theta sum_window dL/df + sum_window dL/dH) / eps     (sae/jumprelu.py's estimators)
    """

    @staticmethod
    def forward(ctx: Any, sae: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                threshold: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # the dense step's own pre-activations (the same tensors as the arguments), so the active set and
        # the kernel window are bit for bit the dense step's
        z = sae.pre_acts(x)
        batch, width = z.shape
        pat = sae.sparse_pattern(z)
        del z
        f = torch.where(pat.active, pat.values, 0.0)
        row_start = _offsets(pat.rows, batch)
        x_hat = F.embedding_bag(pat.cols, W_dec, row_start, mode="sum", per_sample_weights=f) + b_dec
        # the pattern grouped by latent (stable: ascending rows within a latent), for the weight gradients
        by_latent = torch.sort(pat.cols, stable=True).indices
        fired = _per_latent(pat.cols, pat.active.to(torch.int32), width) > 0
        l0 = pat.active.sum().to(f.dtype) / batch
        crow = torch.cat([row_start, row_start.new_full((1,), pat.rows.numel())])
        ctx.save_for_backward(x, W_enc, W_dec, b_dec, threshold, pat.rows, pat.cols, crow, f, pat.active,
                              pat.window, by_latent)
        ctx.apply_b_dec_to_input = sae.apply_b_dec_to_input
        ctx.bandwidth = getattr(sae, "bandwidth", None)
        ctx.mark_non_differentiable(fired)
        ctx.set_materialize_grads(False)
        return x_hat, f, l0, fired

    @staticmethod
    def backward(ctx: Any, g_xhat: Tensor | None, g_f: Tensor | None, g_l0: Tensor | None,
                 _g_fired: None) -> tuple[Tensor | None, ...]:
        x, W_enc, W_dec, b_dec, threshold, rows, cols, crow, f, active, window, by_latent = ctx.saved_tensors
        batch, width = x.shape[0], W_dec.shape[0]
        g = g_xhat.float().contiguous() if g_xhat is not None else torch.zeros_like(x)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": sampled_addmm is all we use of it
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(crow, cols, f, (batch, width), check_invariants=False)
        df = torch.sparse.sampled_addmm(pattern, g, W_dec.T, beta=0.0).values()
        if g_f is not None:
            df = df + g_f
        dz = torch.where(active, df, 0.0)
        rows_by_latent = rows[by_latent]
        latent_start = _offsets(cols, width)
        d_W_dec = F.embedding_bag(rows_by_latent, g, latent_start, mode="sum", per_sample_weights=f[by_latent])
        encoded = x - b_dec if ctx.apply_b_dec_to_input else x
        d_W_enc = F.embedding_bag(rows_by_latent, encoded, latent_start, mode="sum",
                                  per_sample_weights=dz[by_latent]).T
        d_b_enc = _per_latent(cols, dz, width)
        d_b_dec = g.sum(0)
        if ctx.apply_b_dec_to_input:
            d_b_dec = d_b_dec - W_enc @ d_b_enc
        d_theta = None
        if threshold is not None and ctx.needs_input_grad[6]:
            window_f = _per_latent(cols, torch.where(window, df, 0.0), width)
            window_h = torch.zeros_like(window_f)
            if g_l0 is not None:
                window_h = _per_latent(cols, window.to(f.dtype), width) * (g_l0 / batch)
            d_theta = -(threshold * window_f + window_h) / ctx.bandwidth
        return None, None, d_W_enc, d_b_enc, d_W_dec, d_b_dec, d_theta
