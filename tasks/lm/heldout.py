"""What the stages that judge a (site, layer)'s SAEs on held-out tokens share (evaluate, inspect): the
held-out tokens, the trained SAEs of the sweep with their training logs, and writing a parquet table to the
storage root."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from sae import SparseAutoencoder, SweepPoint, load_saelens, sweep_points
from storage import layout
from storage.root import StorageRoot
from tasks.config import StagesConfig


def load_eval_tokens(cfg: StagesConfig, root: StorageRoot) -> np.ndarray:
    """The held-out sequences [n_seq, ctx]: `tokens/eval`, cut to `evaluate.n_seqs` where it is set."""
    tokens = zarr.open_array(store=root.zarr_store(layout.TOKENS_EVAL, read_only=True), mode="r")[:]
    return tokens[: cfg.evaluate.n_seqs] if cfg.evaluate.n_seqs else tokens


def load_sweep_saes(cfg: StagesConfig, site: str, layer: int, root: StorageRoot
                    ) -> tuple[list[SweepPoint], list[SparseAutoencoder], list[dict]]:
    """The sweep's points, their trained SAEs (folded: they eat raw activations) and each one's last
    training-log row ({} for an empty log), in sweep order."""
    points = sweep_points(cfg.sae)
    saes, lasts = [], []
    for point in points:
        rel = layout.sae_dir(site, layer, point.width, point.slug)
        with tempfile.TemporaryDirectory() as tmp:
            local = root.download_dir(rel, Path(tmp) / "sae")
            saes.append(load_saelens(local)[0])
            log = pq.read_table(local / layout.TRAIN_LOG).to_pylist()
        lasts.append(log[-1] if log else {})
    return points, saes, lasts


def write_parquet(root: StorageRoot, rel: str, rows: list[dict] | pa.Table) -> None:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "rows.parquet"
        pq.write_table(table, local)
        root.write_bytes(rel, local.read_bytes())
