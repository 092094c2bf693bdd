"""Stage 2: one shard of training sequences -> activations of every requested (site, layer).

The model runs batch after batch, up to the last requested layer only, while a writer thread stores the
previous batches' rows, so storage writes overlap compute. Rows are selected and cast to the storage dtype on
the model's device. Memory is bounded by a few batches plus one storage object (a zarr shard) per
(site, layer), whatever the shard's token count.
"""
from __future__ import annotations

import math
import queue
import threading
from functools import partial
from typing import Callable

import numpy as np
import torch
import zarr

from storage.arrays import RowWriter, create_array, encode_rows, read_block
from storage.fingerprint import fingerprint
from storage.layout import TOKENS_TRAIN, activation_shard, shard_name
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.lm.model import keep_mask, load_model, load_tokenizer, pick_device, special_token_ids
from tasks.lm.sites import ActivationCapture, forward_until, site_hooks, site_width
from tasks.units import FORMAT_VERSION, PlanContext, Planned, UnitResult, UnitSpec


def x_label(site: str, layer: int, shard: int) -> str:
    """How errors name an activation array: its path, then the site and layer in words."""
    return f"{activation_shard(site, layer, shard)}/x ({site} layer {layer})"


def n_shards(n_train_seqs: int, seqs_per_shard: int) -> int:
    return math.ceil(n_train_seqs / seqs_per_shard)


def plan_units(ctx: PlanContext, planned: Planned) -> list[UnitSpec]:
    """Per storage wave, one unit per shard of train sequences, running the model for that wave's groups
    only; with one wave the unit ids are plain `shard_{s}`."""
    cfg, tokenize = ctx.cfg, planned["tokenize"][0]
    units = []
    for w, groups in enumerate(ctx.waves):
        keys = [[site, layer] for site, layer in groups]
        prefix = "" if len(ctx.waves) == 1 else f"wave_{w:02d}/"
        units += [
            UnitSpec(stage="extract", unit=prefix + shard_name(s), shard=s, wave=w, deps=[tokenize.key], groups=keys,
                     fingerprint=fingerprint("extract", FORMAT_VERSION, tokenize.fingerprint, cfg.model, keys,
                                             cfg.extract, cfg.storage.activation_dtype, cfg.storage.chunk_rows,
                                             cfg.storage.shard_chunks, s))
            for s in range(ctx.n_shards)]
    return units


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> UnitResult:
    return extract_shard(cfg, spec.shard, spec.groups, root)


class _BackgroundWriter:
    """One thread runs queued jobs in order (array setup, then each batch's writes) so the model computes the
    next batch meanwhile; the queue is short, so at most `depth` batches of rows wait in memory. An
    exception in the thread is re-raised in the caller."""

    def __init__(self, depth: int = 3):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="extract-writer")
        self.thread.start()

    def _run(self):
        while True:
            job = self.q.get()
            if job is None:
                return
            if self.error is None:
                try:
                    job()
                except BaseException as e:  # surfaced to the caller in put()/close()
                    self.error = e

    def put(self, job: Callable[[], None]):
        if self.error:
            raise self.error
        self.q.put(job)

    def close(self):
        self.q.put(None)
        self.thread.join()
        if self.error:
            raise self.error


def create_outputs(cfg: StagesConfig, root: StorageRoot, shard: int, keys: list[tuple[str, int]], widths: dict,
                    n_rows: int, writers: dict) -> None:
    """Clear and create every (site, layer) group of the shard (fills `writers`); runs on the writer thread so
    the first forward pass overlaps it."""
    dtype, chunk, per_shard = cfg.storage.activation_dtype, cfg.storage.chunk_rows, cfg.storage.shard_chunks
    for site, layer in keys:
        group = activation_shard(site, layer, shard)
        root.remove(group)
        store = root.zarr_store(group)
        zarr.open_group(store=store, mode="w", attributes={"site": site, "layer": layer, "shard": shard,
                                                           "model": cfg.model.name_or_path})
        d = widths[site]
        x = create_array(store, "x", (n_rows, d), dtype, (chunk, d), shard_chunks=per_shard)
        # 8 bytes a row: one plain chunk per x shard keeps its objects as few as x's, and not tiny
        index = create_array(store, "index", (n_rows, 2), "int32", (chunk * per_shard, 2))
        writers[(site, layer)] = (RowWriter(x, x_label(site, layer, shard)), RowWriter(index, f"{group}/index"))


def append_rows(writers: dict, rows: dict, index_rows: np.ndarray) -> None:
    for key, (xw, iw) in writers.items():
        xw.append(rows[key])
        iw.append(index_rows)


def extract_shard(cfg: StagesConfig, shard: int, keys: list[tuple[str, int]], root: StorageRoot) -> UnitResult:
    """Activations of the shard's sequences at every (site, layer) in `keys` (one storage wave's groups)."""
    tokens_arr = zarr.open_array(store=root.zarr_store(TOKENS_TRAIN, read_only=True), mode="r")
    per = cfg.extract.seqs_per_shard
    tokens = read_block(tokens_arr, shard * per, (shard + 1) * per)
    if len(tokens) == 0:
        raise ValueError(f"extract: shard {shard} is past the end of {TOKENS_TRAIN} ({tokens_arr.shape[0]} sequences)")
    tok = load_tokenizer(cfg.model)
    mask = keep_mask(tokens, special_token_ids(tok))
    n_rows = int(mask.sum())
    model = load_model(cfg.model)
    device = pick_device(cfg.model.device)
    dtype = cfg.storage.activation_dtype
    widths = {site: site_width(model.config, site) for site, _ in keys}
    last_layer = max(layer for _, layer in keys)
    labels = {(site, layer): x_label(site, layer, shard) for site, layer in keys}
    writers: dict[tuple[str, int], tuple[RowWriter, RowWriter]] = {}
    capture = ActivationCapture(keys)
    background = _BackgroundWriter()
    background.put(partial(create_outputs, cfg, root, shard, keys, widths, n_rows, writers))
    try:
        with torch.inference_mode(), site_hooks(model, capture.hooks()):
            for start in range(0, len(tokens), cfg.extract.batch_size):
                batch = tokens[start:start + cfg.extract.batch_size]
                bmask = mask[start:start + cfg.extract.batch_size]
                forward_until(model, torch.from_numpy(batch.astype(np.int64)).to(device), last_layer)
                seq, pos = np.nonzero(bmask)
                index_rows = np.stack([seq + shard * per + start, pos], axis=1).astype(np.int32)
                sel = torch.from_numpy(bmask).to(device)
                # select and cast on the model's device: only the stored bytes cross to the host
                rows = {key: encode_rows(capture.values[key][sel], dtype, labels[key]) for key in keys}
                capture.values.clear()
                background.put(partial(append_rows, writers, rows, index_rows))
    finally:
        background.close()
    for xw, iw in writers.values():
        xw.close()
        iw.close()
    return UnitResult(outputs=[activation_shard(site, layer, shard) for site, layer in keys],
                      metrics={"rows": n_rows, "seqs": int(len(tokens))})
