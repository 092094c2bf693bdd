"""Packing tokenized documents into the fixed-length rows the pipeline (and the embedded model's training)
works on."""
from __future__ import annotations

import numpy as np


def pack_sequences(docs_ids: list[list[int]], ctx: int, bos: int, eos: int) -> np.ndarray:
    """Concatenate documents (each closed by EOS) and cut into rows of BOS + (ctx-1) tokens; the
    incomplete tail is dropped."""
    stream = np.fromiter((t for ids in docs_ids for t in (*ids, eos)), dtype=np.int64)
    body = ctx - 1
    n = len(stream) // body
    rows = np.empty((n, ctx), dtype=np.int32)
    rows[:, 0] = bos
    rows[:, 1:] = stream[: n * body].reshape(n, body)
    return rows
