"""Feature splitting across widths, as Gemma Scope shows it: each latent of a wider SAE and its nearest
latent of a narrower one by decoder cosine. A narrow latent that several wide latents sit close to has split
into them; a wide latent far from every narrow one is new at that width."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nearest_by_decoder_cosine(wide: Tensor, narrow: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Decoder rows `wide` [W2, d] and `narrow` [W1, d] -> for each wide row the index of its nearest narrow
    row and their cosine (ties to the lower index), in chunks of wide rows so memory is chunk x W1."""
    a, b = F.normalize(wide.float(), dim=1), F.normalize(narrow.float(), dim=1)
    best, cos = [], []
    for start in range(0, len(a), chunk):
        c, i = (a[start:start + chunk] @ b.T).max(dim=1)
        best.append(i)
        cos.append(c)
    if not best:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(best), torch.cat(cos)
