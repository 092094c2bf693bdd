"""benchmarks/train.py's plain dense reference (issue #12): a JumpReLU-shaped training step in bare torch, the
same matmuls as our dense step (encode [B, d] x [d, W], decode [B, W] x [W, d], and their weight gradients),
a threshold mask, MSE plus an L1 on the codes, and Adam (fused on CUDA); no trainer, schedules, dead-latent
counts, logging or read-ahead. Timed in the same run as ours, so ours / reference says what our trainer's
bookkeeping costs at that width on that device, and the reference's % of peak what such a step can reach."""
from __future__ import annotations

import time

import torch

from train_common import free_memory, step_flops, sync


def time_reference(pool: torch.Tensor, width: int, batch: int, device: torch.device, autocast: str,
                   warm: int, budget_s: float, min_timed: int, max_timed: int, peak: float) -> dict:
    """Steady-state steps/s of the bare step on cycled batches of `pool` (rows already on `device`)."""
    d_in = pool.shape[1]
    gen = torch.Generator().manual_seed(0)
    w_enc = (torch.randn(d_in, width, generator=gen) / d_in ** 0.5).to(device).requires_grad_()
    w_dec = w_enc.detach().t().contiguous().requires_grad_()
    b_enc = torch.zeros(width, device=device, requires_grad=True)
    b_dec = torch.zeros(d_in, device=device, requires_grad=True)
    threshold = torch.full((width,), 0.05, device=device)
    opt = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=1e-4, fused=device.type == "cuda")
    n_batches = pool.shape[0] // batch
    dtype = torch.bfloat16 if autocast == "bfloat16" else torch.float32

    def step(i: int) -> None:
        x = pool[(i % n_batches) * batch:(i % n_batches + 1) * batch]
        with torch.autocast(device.type, dtype=dtype, enabled=autocast == "bfloat16"):
            pre = (x - b_dec) @ w_enc + b_enc
            f = pre * (pre > threshold)
            x_hat = f @ w_dec + b_dec
        loss = (x_hat.float() - x).pow(2).sum(-1).mean() + 1e-3 * f.float().abs().sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(warm):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    step(warm)
    sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    timed = int(min(max_timed, max(min_timed, budget_s / one)))
    t0 = time.perf_counter()
    for i in range(timed):
        step(warm + 1 + i)
    sync(device)
    window = time.perf_counter() - t0
    del w_enc, w_dec, b_enc, b_dec, opt
    free_memory(device)
    rate = step_flops(batch, d_in, width) * timed / window
    return {"width": width, "batch": batch, "d_in": d_in, "warm_steps": warm + 1, "timed_steps": timed,
            "s_per_step": window / timed, "steps_per_s": timed / window, "flops_per_s": rate,
            "frac_of_peak": rate / peak}
