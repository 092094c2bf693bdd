"""A finished run's shuffled activations of one (site, layer), as the benchmarks that retrain on them read
them: every row decoded to float32, and the normalisation scale its train unit used."""
from __future__ import annotations

from pathlib import Path

import torch
import zarr

from storage import layout
from storage.arrays import DecodedRows
from storage.root import StorageRoot
from tasks.stages.train import norm_scale


def shuffled_rows(run: str | Path, site: str, layer: int) -> tuple[torch.Tensor, float]:
    """(rows [N, d] float32, C = sqrt(E||x||^2))."""
    group = zarr.open_group(store=StorageRoot(str(run)).zarr_store(layout.shuffled(site, layer), read_only=True),
                            mode="r")
    return DecodedRows(group["x"])[:].float(), norm_scale(dict(group.attrs))
