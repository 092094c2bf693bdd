"""How an extract unit stores its rows: every (site, layer) group of its shard created at final size, then
rows appended batch by batch on a background thread, so the model computes the next batch meanwhile.

With one writer the thread writes itself (`storage.arrays.RowWriter`: whole storage objects, one process).
With N > 1 the thread hands each batch to N writer processes (`storage.writer_pool`), each the one owner of
its share of the storage objects; the stored bytes are the same either way. Either way the queue is short,
so at most a few batches of rows wait in memory, plus one storage object (a zarr shard) per array.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np
import zarr

from storage.arrays import RowWriter, create_array, stored_itemsize
from storage.config import StorageConfig
from storage.layout import activation_shard
from storage.root import StorageRoot
from storage.writer_pool import PoolArray, WriterPool

Key = tuple[str, int]


def x_label(site: str, layer: int, shard: int) -> str:
    """How errors name an activation array: its path, then the site and layer in words."""
    return f"{activation_shard(site, layer, shard)}/x ({site} layer {layer})"


def create_outputs(storage: StorageConfig, model_name: str, root: StorageRoot, shard: int, keys: list[Key],
                   widths: dict[str, int], n_rows: int) -> dict[Key, tuple[zarr.Array, zarr.Array]]:
    """Clear and create every (site, layer) group of the shard: its `x` and `index` arrays."""
    dtype, chunk, per_shard = storage.activation_dtype, storage.chunk_rows, storage.shard_chunks
    arrays = {}
    for site, layer in keys:
        group = activation_shard(site, layer, shard)
        root.remove(group)
        store = root.zarr_store(group)
        zarr.open_group(store=store, mode="w", attributes={"site": site, "layer": layer, "shard": shard,
                                                           "model": model_name})
        d = widths[site]
        x = create_array(store, "x", (n_rows, d), dtype, (chunk, d), shard_chunks=per_shard)
        # 8 bytes a row: one plain chunk per x shard keeps its objects as few as x's, and not tiny
        index = create_array(store, "index", (n_rows, 2), "int32", (chunk * per_shard, 2))
        arrays[(site, layer)] = (x, index)
    return arrays


class BackgroundWriter:
    """One thread runs queued jobs in order; the queue is short, so at most `depth` jobs (batches of rows)
    wait in memory. An exception in the thread is re-raised in the caller, and later jobs are skipped."""

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

    def stop(self):
        """Skip the jobs still queued and wait for the thread to end; raises nothing."""
        self.error = self.error or RuntimeError("stopped")
        self.q.put(None)
        self.thread.join()


def slot_bytes(keys: list[Key], widths: dict[str, int], itemsize: int, max_batch_rows: int) -> int:
    """Bytes one batch of every array takes in a writer pool's slot (64-byte aligned arrays)."""
    per_array = [max_batch_rows * widths[site] * itemsize for site, _ in keys] + [max_batch_rows * 8] * len(keys)
    return sum(-(-b // 64) * 64 for b in per_array)


class ShardWriter:
    """Stores one extract shard: `append` each batch's rows (per (site, layer)) and their index rows, then
    `close`, which returns once every object is written (or raises what a writer raised). As a context
    manager, an exception in the body aborts the writes instead. `writers` > 1 starts the writer processes
    at once, so they start while the caller loads its model; `max_batch_rows` bounds a batch's rows."""

    def __init__(self, storage: StorageConfig, model_name: str, root: StorageRoot, shard: int, keys: list[Key],
                 widths: dict[str, int], n_rows: int, writers: int = 1, max_batch_rows: int = 0, depth: int = 3):
        self.keys = list(keys)
        self.paths = {(site, layer): (f"{activation_shard(site, layer, shard)}/x",
                                      f"{activation_shard(site, layer, shard)}/index") for site, layer in keys}
        self.row_writers: dict[Key, tuple[RowWriter, RowWriter]] = {}
        self.pool = None
        if writers > 1:
            itemsize = stored_itemsize(storage.activation_dtype)
            self.pool = WriterPool(root, writers, slot_bytes(self.keys, widths, itemsize, max_batch_rows))
        self.background = BackgroundWriter(depth)
        # the arrays are made on the writer thread, so the first forward pass overlaps it
        self.background.put(lambda: self._create(storage, model_name, root, shard, widths, n_rows))

    def _create(self, storage, model_name, root, shard, widths, n_rows) -> None:
        arrays = create_outputs(storage, model_name, root, shard, self.keys, widths, n_rows)
        if self.pool is None:
            self.row_writers = {(site, layer): (RowWriter(x, x_label(site, layer, shard)),
                                                RowWriter(index, self.paths[(site, layer)][1]))
                                for (site, layer), (x, index) in arrays.items()}
            return
        specs, row_bytes = {}, {}
        for (site, layer), pair in arrays.items():
            for key, array in zip(self.paths[(site, layer)], pair):
                specs[key] = PoolArray.of(key, array)
                row_bytes[key] = int(np.prod(array.shape[1:])) * array.dtype.itemsize
        self.pool.open(specs, row_bytes)

    def append(self, rows: dict[Key, np.ndarray], index_rows: np.ndarray) -> None:
        try:
            self.background.put(lambda: self._append(rows, index_rows))
        except BaseException:  # a writer failed: stop the others
            self.abort()
            raise

    def _append(self, rows: dict[Key, np.ndarray], index_rows: np.ndarray) -> None:
        if self.pool is None:
            for key, (xw, iw) in self.row_writers.items():
                xw.append(rows[key])
                iw.append(index_rows)
            return
        batch = {}
        for key in self.keys:
            x_path, index_path = self.paths[key]
            batch[x_path], batch[index_path] = rows[key], index_rows
        self.pool.append(batch)

    def close(self) -> None:
        try:
            self.background.close()
        except BaseException:
            self.abort()
            raise
        if self.pool is not None:
            self.pool.close()
            return
        for xw, iw in self.row_writers.values():
            xw.close()
            iw.close()

    def abort(self) -> None:
        if self.background.thread.is_alive():
            self.background.stop()
        if self.pool is not None:
            self.pool.abort()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
