"""Stage 3: one (site, layer)'s shards -> one shuffled array plus the dataset statistics.

Tokenize already shuffled sequence order, so a bucket of consecutive rows is a random sample of sequences;
permuting rows inside a bucket mixes tokens across many sequences per training batch. One read and one write
of the data, buckets in parallel, memory bounded by a few copies of a bucket per worker.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr

from storage.arrays import create_array, decode_rows, logical_dtype, read_block, write_rows_unit
from storage.fingerprint import fingerprint
from storage.layout import activation_shard, shuffled, site_layer
from storage.root import StorageRoot
from tasks.config import SITES, StagesConfig
from tasks.units import FORMAT_VERSION, PlanContext, Planned, UnitResult, UnitSpec


#: bump when the statistics' arithmetic changes (2: sums of squares without BLAS, thread-count independent)
STATS_VERSION = 2


def plan_units(ctx: PlanContext, planned: Planned) -> list[UnitSpec]:
    """One unit per (site, layer), reading every extract shard of its wave (the all-to-all edge)."""
    cfg = ctx.cfg
    units = []
    for site, layer, w in ctx.groups():
        sources = [u for u in planned["extract"] if u.wave == w]
        units.append(UnitSpec(stage="shuffle", unit=site_layer(site, layer), site=site, layer=layer, wave=w,
                              deps=[u.key for u in sources], n_shards=ctx.n_shards,
                              fingerprint=fingerprint("shuffle", FORMAT_VERSION, STATS_VERSION,
                                                      [u.fingerprint for u in sources],
                                                      cfg.shuffle.bucket_rows, cfg.sae.batch_size,
                                                      cfg.storage.shard_chunks, cfg.seed, site, layer)))
    return units


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> UnitResult:
    # the source fingerprint ties the shuffled data to the exact shards it came from
    return shuffle_site_layer(cfg, spec.site, spec.layer, spec.n_shards, spec.fingerprint, root)


class ConcatRows:
    """Row ranges across the shard arrays as if they were one array."""

    def __init__(self, arrays: list[zarr.Array]):
        self.arrays = arrays
        self.starts = np.cumsum([0] + [a.shape[0] for a in arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows as stored (bf16 as uint16 bits)."""
        parts = []
        for i, a in enumerate(self.arrays):
            lo, hi = max(start, self.starts[i]), min(stop, self.starts[i + 1])
            if lo < hi:
                off = self.starts[i]
                parts.append(read_block(a, lo - off, hi - off))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def stored_row_sums(raw: np.ndarray, dtype: str, step: int = 1024) -> tuple[np.ndarray, float]:
    """Per-column sum and the sum of squared norms of stored rows, in float64, a slice of rows at a time so no
    temporary is bucket-sized (float64 copies of a whole bucket were most of the shuffle's memory). No BLAS:
    a BLAS dot product's rounding depends on its thread count, which differs between a 1-CPU Ray task, an
    8-CPU one and a notebook, and the statistics must not."""
    total, sq = np.zeros(raw.shape[1]), 0.0
    for lo in range(0, len(raw), step):
        f = decode_rows(raw[lo:lo + step], dtype).double().numpy()
        total += f.sum(0)
        sq += float(np.square(f).sum())  # numpy's own pairwise sum: the same bits whatever BLAS's threads
    return total, sq


def bucket_rows(requested: int, chunk: int) -> int:
    """Buckets cover whole output objects (shards, else chunks) so concurrent bucket writers never share one."""
    return max(chunk, (requested // chunk) * chunk)


def shuffle_site_layer(cfg: StagesConfig, site: str, layer: int, n_shards: int, source_fingerprint: str,
                       root: StorageRoot) -> UnitResult:
    xs, idxs = [], []
    for s in range(n_shards):
        g = zarr.open_group(store=root.zarr_store(activation_shard(site, layer, s), read_only=True), mode="r")
        xs.append(g["x"])
        idxs.append(g["index"])
    x_src, i_src = ConcatRows(xs), ConcatRows(idxs)
    n, d = len(x_src), xs[0].shape[1]
    dtype = logical_dtype(xs[0])
    chunk = cfg.sae.batch_size
    out = shuffled(site, layer)
    root.remove(out)
    store = root.zarr_store(out)
    group = zarr.open_group(store=store, mode="w")
    x_out = create_array(store, "x", (n, d), dtype, (chunk, d), shard_chunks=cfg.storage.shard_chunks)
    i_out = create_array(store, "index", (n, 2), "int32", (chunk, 2), shard_chunks=cfg.storage.shard_chunks)
    bucket = bucket_rows(cfg.shuffle.bucket_rows, write_rows_unit(x_out))
    n_buckets = math.ceil(n / bucket)

    def one_bucket(b: int):
        lo, hi = b * bucket, min(n, (b + 1) * bucket)
        rng = np.random.default_rng([cfg.seed, SITES.index(site), layer, b])
        perm = rng.permutation(hi - lo)
        # rows stay in their stored dtype (bf16 as uint16 bits): a permutation needs no decoding, and the
        # copies it makes are one bucket each
        x = x_src.read(lo, hi)[perm]
        x_out[lo:hi] = x
        i_out[lo:hi] = i_src.read(lo, hi)[perm]
        return stored_row_sums(x, dtype)

    with ThreadPoolExecutor(max_workers=cfg.shuffle.workers) as pool:
        results = list(pool.map(one_bucket, range(n_buckets)))  # summed in bucket order: deterministic
    total = np.sum([r[0] for r in results], axis=0)
    sq = float(np.sum([r[1] for r in results]))
    attrs = {"count": int(n), "mean": (total / n).tolist(), "mean_sq_norm": sq / n, "dtype": dtype,
             "source_fingerprint": source_fingerprint, "site": site, "layer": layer, "bucket_rows": bucket}
    group.attrs.update(attrs)
    return UnitResult(outputs=[out], metrics={"rows": int(n), "buckets": n_buckets, "mean_sq_norm": sq / n})
