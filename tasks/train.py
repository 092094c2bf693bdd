"""Stage 4: every SAE of one (site, layer) -- widths x lambdas -- trained on one stream read once.

The unit only adapts storage to the public training API in `sae/` (which knows nothing of zarr): a
prefetching batch reader in, folded SAEs out, written in Gemma Scope's and SAELens's formats.
"""
from __future__ import annotations

import math
import queue
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import zarr

from sae import save_gemma_scope_npz, save_saelens, train_saes
from storage.arrays import read_rows
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.model import pick_device
from tasks.shuffle import shuffled_group
from tasks.sites import TL_HOOKS


def sae_dir(site: str, layer: int, width: int, lam: float) -> str:
    return f"saes/{site}/layer_{layer}/width_{width}/lambda_{lam:g}"


def norm_scale(attrs: dict) -> float:
    """C = sqrt(E||x_raw||^2): dividing by it gives activations of unit mean squared norm, so one lambda
    means the same sparsity pressure at every site and layer."""
    return math.sqrt(attrs["mean_sq_norm"])


def prefetched_batches(x: zarr.Array, batch_size: int, depth: int = 4) -> Iterator[torch.Tensor]:
    """Full batches in order, read by a thread `depth` batches ahead so the step never waits on storage.
    The ragged tail (< one batch) is dropped."""
    n_batches = x.shape[0] // batch_size
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def reader():
        try:
            for b in range(n_batches):
                if stop.is_set():
                    return
                q.put(read_rows(x, b * batch_size, (b + 1) * batch_size))
            q.put(None)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    threading.Thread(target=reader, daemon=True).start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def train_site_layer(cfg: StagesConfig, site: str, layer: int, model_name: str, root: StorageRoot) -> dict:
    group = zarr.open_group(store=root.zarr_store(shuffled_group(site, layer), read_only=True), mode="r")
    x = group["x"]
    attrs = dict(group.attrs)
    if x.shape[0] < cfg.sae.batch_size:
        raise ValueError(f"{shuffled_group(site, layer)}: {x.shape[0]} rows, fewer than one batch "
                         f"(sae.batch_size={cfg.sae.batch_size})")
    trained = train_saes(lambda: prefetched_batches(x, cfg.sae.batch_size), d_in=x.shape[1], cfg=cfg.sae,
                         norm_scale=norm_scale(attrs), device=str(pick_device(cfg.model.device)))
    outputs, metrics = [], {}
    for t in trained:
        rel = sae_dir(site, layer, t.width, t.lam)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "sae"
            folder.mkdir()
            save_gemma_scope_npz(t.sae, folder / "params.npz")
            save_saelens(t.sae, folder, model_name=model_name, hook_name=TL_HOOKS[site].format(L=layer),
                         context_size=cfg.corpus.ctx, prepend_bos=True,
                         extra_metadata={"scopeflow_site": site, "scopeflow_layer": layer, "lambda": t.lam,
                                         "norm_scale": norm_scale(attrs), "train_tokens": t.tokens})
            rows = [dict(r, site=site, layer=layer) for r in t.log]
            pq.write_table(pa.Table.from_pylist(rows), folder / "train_log.parquet")
            root.upload_dir(folder, rel)
        outputs.append(rel)
        metrics[f"width_{t.width}/lambda_{t.lam:g}"] = {"steps": t.steps, "tokens": t.tokens,
                                                         "final_l0": t.log[-1]["l0"] if t.log else None}
    return {"outputs": outputs, "metrics": metrics}
