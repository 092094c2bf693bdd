"""Stage 2: one shard of training sequences -> activations of every requested (site, layer).

The model runs batch after batch, up to the last requested layer only, while a writer thread stores the
previous batches' rows (itself, or through `extract.writers` writer processes: storage/activation_writer.py),
so storage writes overlap compute. Rows are selected and cast to the storage dtype on
the model's device. Memory is bounded by a few batches plus one storage object (a zarr shard) per
(site, layer), whatever the shard's token count.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import zarr

from storage.activation_writer import ShardWriter, x_label
from storage.arrays import encode_rows, read_block
from storage.fingerprint import fingerprint
from storage.layout import TOKENS_TRAIN, activation_shard, shard_name
from storage.root import StorageRoot
from tasks.config import RUNTIME_ONLY, StagesConfig
from tasks.lm.model import keep_mask, load_model, load_tokenizer, pick_device, special_token_ids
from tasks.lm.sites import ActivationCapture, forward_until, site_hooks, site_width
from tasks.units import FORMAT_VERSION, PlanContext, Planned, UnitResult, UnitSpec


def n_shards(n_train_seqs: int, seqs_per_shard: int) -> int:
    return math.ceil(n_train_seqs / seqs_per_shard)


def extract_fields(cfg: StagesConfig) -> dict:
    """The extract settings that shape its output (not `writers`: the bytes are the same for any count)."""
    return cfg.extract.model_dump(mode="json", exclude=RUNTIME_ONLY["extract"])


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
                                             extract_fields(cfg), cfg.storage.activation_dtype, cfg.storage.chunk_rows,
                                             cfg.storage.shard_chunks, s))
            for s in range(ctx.n_shards)]
    return units


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> UnitResult:
    return extract_shard(cfg, spec.shard, spec.groups, root)


def writer_count(setting: int | str, n_objects: int) -> int:
    """`extract.writers`: a number, or "auto": one writer per CPU the unit may use beyond the forward pass's
    own (Ray sets OMP_NUM_THREADS to a task's num_cpus, `orchestration.cpus_per_unit.extract`), at most one
    per storage object of x; 1 (the unit's own writer thread) on a 1- or 2-CPU unit."""
    if setting != "auto":
        return int(setting)
    cpus = int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))
    return max(1, min(cpus - 1, n_objects))


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
    unit_rows = cfg.storage.chunk_rows * cfg.storage.shard_chunks
    writers = writer_count(cfg.extract.writers, len(keys) * math.ceil(n_rows / unit_rows))
    capture = ActivationCapture(keys)
    with ShardWriter(cfg.storage, cfg.model.name_or_path, root, shard, keys, widths, n_rows, writers,
                     max_batch_rows=cfg.extract.batch_size * tokens.shape[1]) as out, \
            torch.inference_mode(), site_hooks(model, capture.hooks()):
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
            out.append(rows, index_rows)
    return UnitResult(outputs=[activation_shard(site, layer, shard) for site, layer in keys],
                      metrics={"rows": n_rows, "seqs": int(len(tokens))})
