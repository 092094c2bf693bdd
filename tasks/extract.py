"""Stage 2: one shard of training sequences -> activations of every requested (site, layer).

The model runs batch after batch while a writer thread encodes and stores the previous batch's rows, so
storage writes overlap compute. Memory is bounded by a batch plus one chunk per (site, layer).
"""
from __future__ import annotations

import math
import queue
import threading

import numpy as np
import torch
import zarr

from storage.arrays import RowWriter, create_array
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.model import load_model, pick_device, special_token_ids, load_tokenizer
from tasks.sites import ActivationCapture, site_hooks, site_width
from tasks.tokenize import TOKENS_TRAIN


def shard_group(site: str, layer: int, shard: int) -> str:
    return f"activations/{site}/layer_{layer}/shard_{shard:05d}"


def n_shards(n_train_seqs: int, seqs_per_shard: int) -> int:
    return math.ceil(n_train_seqs / seqs_per_shard)


def keep_mask(tokens: np.ndarray, special: set[int]) -> np.ndarray:
    """Rows are tokens that are not BOS, EOS or padding (as Gemma Scope)."""
    return ~np.isin(tokens, np.fromiter(special, dtype=tokens.dtype))


class _BackgroundWriter:
    """One thread drains a bounded queue of (writer, rows) so the next forward pass runs meanwhile; an
    exception in the thread is re-raised in the caller."""

    def __init__(self, depth: int = 2):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    for writer, rows in item:
                        writer.append(rows)
                except BaseException as e:  # surfaced to the caller in put()/close()
                    self.error = e

    def put(self, item):
        if self.error:
            raise self.error
        self.q.put(item)

    def close(self):
        self.q.put(None)
        self.thread.join()
        if self.error:
            raise self.error


def extract_shard(cfg: StagesConfig, shard: int, layers: list[int], root: StorageRoot) -> dict:
    tokens_arr = zarr.open_array(store=root.zarr_store(TOKENS_TRAIN, read_only=True), mode="r")
    per = cfg.extract.seqs_per_shard
    tokens = tokens_arr[shard * per:(shard + 1) * per]
    if len(tokens) == 0:
        raise ValueError(f"extract: shard {shard} is past the end of {TOKENS_TRAIN} ({tokens_arr.shape[0]} sequences)")
    tok = load_tokenizer(cfg.model)
    mask = keep_mask(tokens, special_token_ids(tok))
    n_rows = int(mask.sum())
    model = load_model(cfg.model)
    device = pick_device(cfg.model.device)
    keys = [(site, layer) for site in cfg.sites for layer in layers]
    dtype = cfg.storage.activation_dtype
    writers: dict[tuple[str, int], tuple[RowWriter, RowWriter]] = {}
    outputs = []
    for site, layer in keys:
        group = shard_group(site, layer, shard)
        root.remove(group)
        store = root.zarr_store(group)
        zarr.open_group(store=store, mode="w", attributes={"site": site, "layer": layer, "shard": shard,
                                                           "model": cfg.model.name_or_path})
        d = site_width(model.config, site)
        x = create_array(store, "x", (n_rows, d), dtype, (cfg.storage.chunk_rows, d))
        index = create_array(store, "index", (n_rows, 2), "int32", (cfg.storage.chunk_rows, 2))
        label = f"{group}/x ({site} layer {layer})"
        writers[(site, layer)] = (RowWriter(x, label), RowWriter(index, f"{group}/index"))
        outputs.append(group)

    capture = ActivationCapture(keys)
    background = _BackgroundWriter()
    try:
        with torch.inference_mode(), site_hooks(model, capture.hooks()):
            for start in range(0, len(tokens), cfg.extract.batch_size):
                batch = tokens[start:start + cfg.extract.batch_size]
                bmask = mask[start:start + cfg.extract.batch_size]
                model(torch.from_numpy(batch.astype(np.int64)).to(device))
                seq, pos = np.nonzero(bmask)
                index_rows = np.stack([seq + shard * per + start, pos], axis=1).astype(np.int32)
                sel = torch.from_numpy(bmask).to(device)
                work = []
                for key, (xw, iw) in writers.items():
                    work.append((xw, capture.values[key][sel].float().cpu()))
                    work.append((iw, index_rows))
                background.put(work)
    finally:
        background.close()
    for xw, iw in writers.values():
        xw.close()
        iw.close()
    return {"outputs": outputs, "metrics": {"rows": n_rows, "seqs": int(len(tokens))}}
