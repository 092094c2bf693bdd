"""Per-latent statistics and top-k activating examples of an SAE, accumulated over batches of held-out rows.

Memory is bounded by k per latent, never by the number of rows seen: the top-k examples are a running
[k, d_sae] buffer merged with each batch by one `torch.topk`. To make the kept set and its order exact
even where activations tie (identical contexts give identical activations), each candidate is one int64
sort key: the activation's float32 bits in an order-preserving form in the high 32 bits, and the row's id
reversed in the low 32, so the keys are unique and a larger key is a larger activation, then an earlier row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: the key of an empty slot (a latent with fewer than k firing rows so far)
EMPTY = torch.iinfo(torch.int64).min
#: candidate keys merged into the top-k buffer per torch.topk call
MERGE_ELEMENTS = 1 << 24
_LOW = 1 << 32
_MAX_ROW = _LOW - 1


def _ordered_bits(values: Tensor) -> Tensor:
    """float32 -> int64 with the same order (positive floats' bits already sort; negatives' are flipped)."""
    bits = values.float().contiguous().view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _float_of_ordered(ordered: Tensor) -> Tensor:
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).to(torch.int32)
    return bits.view(torch.float32)


def sort_keys(values: Tensor, row_ids: Tensor) -> Tensor:
    """Unique int64 keys [n, d_sae] ordering (value descending, row ascending) as keys descend."""
    return _ordered_bits(values) * _LOW + (_MAX_ROW - row_ids.long()).unsqueeze(-1)


@dataclass(frozen=True)
class LatentSummary:
    """What `LatentStats.result` hands back, on the CPU. Per latent: `fire_counts` [d_sae] int64, `max_act`
    and `mean_act` [d_sae] (NaN where dead). `top_values` [k, d_sae] float32 and `top_rows` [k, d_sae]
    int64, best first; slots past a latent's firing rows hold NaN and -1."""

    n_rows: int
    fire_counts: Tensor
    max_act: Tensor
    mean_act: Tensor
    top_values: Tensor
    top_rows: Tensor

    @property
    def frequency(self) -> Tensor:
        return self.fire_counts.double() / self.n_rows


class LatentStats:
    """Streaming accumulator over batches of latents `f` [n, d_sae] with the id of each row (any int below
    2**32, unique over the whole stream): `update` per batch, `result` once. A latent fires where f != 0
    (as `SAEMetrics` counts it)."""

    def __init__(self, d_sae: int, k: int, device: torch.device | str = "cpu") -> None:
        self.k = int(k)
        self.n_rows = 0
        self._counts = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self._sums = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self._max = torch.full((d_sae,), float("-inf"), dtype=torch.float32, device=device)
        self._keys = torch.full((self.k, d_sae), EMPTY, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, f: Tensor, row_ids: Tensor) -> None:
        if f.ndim != 2 or f.shape[1] != self._keys.shape[1] or row_ids.shape != (f.shape[0],):
            raise ValueError(f"expected f [n, {self._keys.shape[1]}] and row_ids [n], got {tuple(f.shape)}, "
                             f"{tuple(row_ids.shape)}")
        if len(row_ids) and (int(row_ids.min()) < 0 or int(row_ids.max()) > _MAX_ROW):
            raise ValueError("row ids must lie in [0, 2**32)")
        f = f.float()
        active = f != 0
        self.n_rows += f.shape[0]
        self._counts += active.sum(0)
        self._sums += f.double().sum(0)
        self._max = torch.maximum(self._max, torch.where(active, f, float("-inf")).amax(0))
        row_ids = row_ids.to(f.device)
        # merged a slice of rows at a time, so the int64 keys stay ~128 MB whatever the width
        step = max(1, MERGE_ELEMENTS // f.shape[1])
        for start in range(0, f.shape[0], step):
            part, act = f[start:start + step], active[start:start + step]
            keys = torch.where(act, sort_keys(part, row_ids[start:start + step]), EMPTY)
            self._keys = torch.topk(torch.cat([self._keys, keys]), self.k, dim=0).values

    def result(self) -> LatentSummary:
        counts = self._counts.cpu()
        dead = counts == 0
        keys = self._keys.cpu()
        empty = keys == EMPTY
        ordered = torch.div(keys, _LOW, rounding_mode="floor")
        rows = _MAX_ROW - (keys - ordered * _LOW)
        return LatentSummary(
            n_rows=self.n_rows, fire_counts=counts,
            max_act=torch.where(dead, float("nan"), self._max.cpu()),
            mean_act=torch.where(dead, float("nan"), self._sums.cpu() / counts.clamp(min=1)),
            top_values=torch.where(empty, float("nan"), _float_of_ordered(torch.where(empty, 0, ordered))),
            top_rows=torch.where(empty, -1, rows))
