"""Extraction's writer processes (storage/writer_pool.py): the same stored bytes as the unit's own writer
thread, failures that fail the unit instead of hanging it, and `extract.writers` outside every fingerprint."""
from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.activation_writer import ShardWriter
from storage.arrays import create_array
from storage.config import StorageConfig
from storage.layout import TOKENS_TRAIN
from storage.root import StorageRoot
from storage.writer_pool import PoolArray, WriterPool
from tasks.config import StagesConfig
from tasks.stages.extract import extract_fields, extract_shard, writer_count
from tasks.units import suite_fingerprint


def _files(root: Path) -> dict[str, str]:
    """Every stored file under root: relative path -> sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _config(root: Path, writers: int, dtype: str = "bfloat16") -> StagesConfig:
    # 64-row chunks in shards of 2: a unit's 744 rows make 5 shards and a tail, and its batches of ~150
    # rows straddle shard boundaries
    return StagesConfig.model_validate({
        "storage": {"root": str(root), "activation_dtype": dtype, "chunk_rows": 64, "shard_chunks": 2},
        "corpus": {"ctx": 32}, "extract": {"seqs_per_shard": 24, "batch_size": 5, "writers": writers}})


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_unit_stores_the_same_bytes_with_1_and_3_writers(tmp_path, embedded_assets, dtype):
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 200, size=(24, 32), dtype=np.int32)
    tokens[:, 0] = 2  # BOS: not stored, so rows != tokens
    keys = [("res", 0), ("att", 1), ("mlp", 1), ("res", 2)]
    stored = {}
    for writers in (1, 3):
        root = StorageRoot(str(tmp_path / f"w{writers}"))
        create_array(root.zarr_store(TOKENS_TRAIN), None, tokens.shape, "int32", (8, 32))[:] = tokens
        result = extract_shard(_config(tmp_path, writers, dtype), 0, keys, root)
        stored[writers] = _files(tmp_path / f"w{writers}" / "activations")
    assert result.metrics["rows"] % 128 and result.metrics["rows"] > 5 * 128  # 5 whole shards and a tail
    assert len(stored[1]) > 4 * 8 and stored[3] == stored[1]


def test_writer_processes_match_the_thread_on_ragged_batches(tmp_path):
    """Batches of random sizes (1 to 170 rows) over objects of 300 rows, 4 writers for 6 arrays; rows 300-399
    are all zeros: a chunk like any other, never a missing one (zarr skips empty chunks unless told not to)."""
    storage = StorageConfig(root=str(tmp_path), activation_dtype="float16", chunk_rows=100, shard_chunks=3)
    keys, widths, n_rows = [("res", 0), ("res", 1), ("mlp", 2)], {"res": 16, "mlp": 8}, 1234
    for writers in (1, 4):
        rng = np.random.default_rng(1)
        with ShardWriter(storage, "m", StorageRoot(str(tmp_path / f"w{writers}")), 3, keys, widths, n_rows,
                         writers, max_batch_rows=170) as out:
            done = 0
            while done < n_rows:
                b = min(int(rng.integers(1, 171)), n_rows - done)
                rows = {k: rng.standard_normal((b, widths[k[0]])).astype(np.float16) for k in keys}
                index = np.arange(2 * done, 2 * (done + b), dtype=np.int32).reshape(b, 2)
                for data in (*rows.values(), index):
                    data[max(300 - done, 0):max(400 - done, 0)] = 0
                out.append(rows, index)
                done += b
    files = _files(tmp_path / "w1")
    assert "activations/res/layer_0/shard_00003/index/c/3/0" in files  # the all-zero chunk of index
    assert _files(tmp_path / "w4") == files


def test_a_failing_writer_fails_the_unit_with_its_error(tmp_path):
    pool = WriterPool(StorageRoot(str(tmp_path)), 2, slot_bytes=4096)
    spec = PoolArray("activations/res/layer_0/shard_00000/x", n_rows=10, unit_rows=10)  # never created
    pool.open({spec.path: spec}, {spec.path: 8})
    pool.append({spec.path: np.zeros((10, 2), np.int32)})
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="extract writer process 0 failed while writing "
                                           "activations/res/layer_0/shard_00000/x"):
        pool.close()
    assert time.monotonic() - t0 < 30
    assert not any(p.is_alive() for p in pool.procs)


def test_a_killed_writer_fails_the_unit_instead_of_hanging(tmp_path):
    storage = StorageConfig(root=str(tmp_path), chunk_rows=8, shard_chunks=1)
    out = ShardWriter(storage, "m", StorageRoot(str(tmp_path)), 0, [("res", 0)], {"res": 4}, 64, writers=2,
                      max_batch_rows=8)
    os.kill(out.pool.procs[1].pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"writer process 1 \(pid \d+\) exited with code -9"):
        for start in range(0, 64, 8):
            out.append({("res", 0): np.zeros((8, 4), np.uint16)}, np.zeros((8, 2), np.int32))
        out.close()
    assert time.monotonic() - t0 < 30
    assert not any(p.is_alive() for p in out.pool.procs)


def test_an_error_in_the_unit_stops_its_writers(tmp_path):
    storage = StorageConfig(root=str(tmp_path), chunk_rows=8, shard_chunks=1)
    with pytest.raises(KeyError):
        with ShardWriter(storage, "m", StorageRoot(str(tmp_path)), 0, [("res", 0)], {"res": 4}, 64, writers=2,
                         max_batch_rows=8) as out:
            raise KeyError("the forward pass failed")
    assert not any(p.is_alive() for p in out.pool.procs)


def test_writers_are_outside_the_fingerprints(tmp_path):
    one, many = _config(tmp_path, 1), _config(tmp_path, 8)
    assert extract_fields(one) == extract_fields(many) == {"seqs_per_shard": 24, "batch_size": 5}
    assert suite_fingerprint(one) == suite_fingerprint(many)


def test_auto_writers_follow_the_units_cpus(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert writer_count("auto", 100) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert writer_count("auto", 100) == 15 and writer_count("auto", 6) == 6 and writer_count(4, 100) == 4
