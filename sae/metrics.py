"""Reconstruction and sparsity metrics of a folded SAE on raw activations, accumulated over batches.

Sums are kept in float64 so a held-out set streamed batch by batch gives the one-shot numbers, and so
FVU's denominator can be formed from running sums once the dataset mean is known.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


#: log10 firing-frequency bin edges, -8 to 0 in steps of 0.5 (Gemma Scope's density plots).
FREQ_HIST_EDGES: tuple[float, ...] = tuple(float(e) for e in np.arange(-8.0, 0.25, 0.5))


class SAEMetrics:
    """Streaming accumulator: `update` per batch, `result` once.

    `dense_threshold` is the firing frequency above which a latent counts as dense (Gemma Scope: 10%).
    """

    def __init__(self, dense_threshold: float = 0.1) -> None:
        self.dense_threshold = float(dense_threshold)
        self.n_tokens = 0
        self._sse: Tensor | None = None
        self._sum_sq_norm: Tensor | None = None
        self._sum_x: Tensor | None = None
        self._fire_counts: Tensor | None = None

    @torch.no_grad()
    def update(self, x_raw: Tensor, x_hat: Tensor, f: Tensor) -> None:
        if x_raw.shape != x_hat.shape or x_raw.ndim != 2 or f.ndim != 2 or f.shape[0] != x_raw.shape[0]:
            raise ValueError(
                f"expected x_raw, x_hat [B, d_in] and f [B, d_sae], got {tuple(x_raw.shape)}, "
                f"{tuple(x_hat.shape)}, {tuple(f.shape)}"
            )
        x = x_raw.double()
        active = f != 0
        if self._sum_x is None:
            # Sums stay on the device so streaming a held-out set costs no host syncs per batch.
            self._sse = torch.zeros((), dtype=torch.float64, device=x.device)
            self._sum_sq_norm = torch.zeros((), dtype=torch.float64, device=x.device)
            self._sum_x = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self._fire_counts = torch.zeros(f.shape[1], dtype=torch.int64, device=f.device)
        self.n_tokens += x.shape[0]
        self._sse += (x - x_hat.double()).pow(2).sum()
        self._sum_sq_norm += x.pow(2).sum()
        self._sum_x += x.sum(0)
        self._fire_counts += active.sum(0)

    def seen_mean(self) -> Tensor:
        """The mean of the activations seen so far (float64, CPU): FVU's reference when no training-set
        mean is known."""
        if self._sum_x is None:
            raise ValueError("no tokens seen: call update() first")
        return self._sum_x.cpu() / self.n_tokens

    def result(self, dataset_mean: Tensor) -> dict:
        """Scalars as Python numbers, `fire_counts` as a CPU int64 tensor [d_sae].

        FVU's denominator is sum ||x - dataset_mean||^2 over the tokens seen, expanded from the running sums.
        `freq_hist` counts latents that fired at least once by log10 firing frequency (clipped into
        [-8, 0]); latents that never fired are `n_dead` and are not in the histogram.
        """
        if self.n_tokens == 0 or self._sum_x is None or self._fire_counts is None:
            raise ValueError("no tokens seen: call update() before result()")
        n = self.n_tokens
        sse = float(self._sse)
        mean = torch.as_tensor(dataset_mean).detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        sum_x = self._sum_x.cpu()
        if mean.shape != sum_x.shape:
            raise ValueError(f"dataset_mean has shape {tuple(mean.shape)}, expected {tuple(sum_x.shape)}")
        total = float(self._sum_sq_norm) - 2.0 * float(mean @ sum_x) + n * float(mean @ mean)

        fire_counts = self._fire_counts.cpu()
        d_sae = fire_counts.numel()
        freq = fire_counts.double() / n
        dead = fire_counts == 0
        dense = freq > self.dense_threshold
        log_freq = torch.log10(freq[~dead]).clamp(FREQ_HIST_EDGES[0], FREQ_HIST_EDGES[-1]).numpy()
        hist, _ = np.histogram(log_freq, bins=np.asarray(FREQ_HIST_EDGES))
        n_dead = int(dead.sum())
        n_dense = int(dense.sum())
        return {
            "n_tokens": n,
            "l0": int(fire_counts.sum()) / n,
            "mse": sse / n,
            "fvu": sse / total if total > 0 else float("nan"),
            "d_sae": d_sae,
            "n_dead": n_dead,
            "dead_frac": n_dead / d_sae,
            "n_dense": n_dense,
            "dense_frac": n_dense / d_sae,
            "fire_counts": fire_counts,
            "freq_hist": [int(c) for c in hist],
            "freq_hist_edges": list(FREQ_HIST_EDGES),
        }

