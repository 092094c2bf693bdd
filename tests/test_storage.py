"""Storage formats and the ledger: what other tools read without our code."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from storage.arrays import (CorruptChunkError, RowWriter, create_array, decode_rows, encode_rows, read_block, read_rows,
                            write_rows_unit)
from storage.fingerprint import fingerprint
from storage.ledger import Ledger
from storage.root import StorageRoot


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"lr": 0.1}) != fingerprint({"lr": 0.1000000001})
    assert len(fingerprint("x")) == 20


def test_root_atomic_json_and_remove(tmp_path):
    root = StorageRoot(str(tmp_path / "r"))
    root.write_json("state/x/a.json", {"k": 1})
    assert root.read_json("state/x/a.json") == {"k": 1}
    assert not [p for p in (tmp_path / "r/state/x").iterdir() if p.name.startswith(".tmp")]
    assert root.listdir("state/x") == ["a.json"]
    root.remove("state")
    assert not root.exists("state/x/a.json")
    root.remove("does/not/exist")  # no error


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_optional_read_is_none_for_a_missing_file_and_the_bytes_otherwise(where, tmp_path, request):
    if where == "s3":
        url = f"s3://scopeflow-test/optional-{tmp_path.name}"
        root = StorageRoot(url, {"endpoint_url": request.getfixturevalue("s3_endpoint")})
    else:
        root = StorageRoot(str(tmp_path / "r"))
    assert root.read_optional("state/x/a.json") is None
    root.write_bytes("state/x/a.json", b"{}")
    assert root.read_optional("state/x/a.json") == b"{}"
    assert root.read_optional("state/x/b.json") is None  # beside one that exists (a listed folder on S3)
    assert Ledger(root).get("train", "res/layer_0") is None


def test_bfloat16_stored_as_uint16_bits_bit_exact(tmp_path):
    x = torch.randn(100, 8) * 1000
    store = zarr.storage.LocalStore(str(tmp_path / "a"))
    arr = create_array(store, None, (100, 8), "bfloat16", (32, 8))
    arr[:] = encode_rows(x, "bfloat16", "a")
    plain = zarr.open_array(str(tmp_path / "a"), mode="r")
    assert plain.dtype == np.uint16 and plain.attrs["dtype"] == "bfloat16"
    back = read_rows(plain, 0, 100)
    assert back.dtype == torch.bfloat16
    assert torch.equal(back.view(torch.uint16), x.to(torch.bfloat16).view(torch.uint16))
    meta = json.loads((tmp_path / "a/zarr.json").read_text())
    assert any(c["name"] == "crc32c" for c in meta["codecs"])


def test_float16_overflow_names_the_array():
    with pytest.raises(ValueError, match="res layer 3.*overflows float16"):
        encode_rows(torch.tensor([[1e5]]), "float16", "activations/res/layer_3/shard_00000/x (res layer 3)")
    assert decode_rows(encode_rows(torch.tensor([[1.5]]), "float16", "x"), "float16").item() == 1.5


def test_row_writer_writes_aligned_chunks_and_checks_count(tmp_path):
    store = zarr.storage.LocalStore(str(tmp_path / "w"))
    arr = create_array(store, None, (50, 3), "float32", (16, 3))
    w = RowWriter(arr, "w")
    data = torch.arange(150, dtype=torch.float32).reshape(50, 3)
    for lo in range(0, 50, 7):
        w.append(data[lo:lo + 7])
    assert w.close() == 50
    assert torch.equal(read_rows(arr, 0, 50), data)
    short = RowWriter(create_array(zarr.storage.LocalStore(str(tmp_path / "s")), None, (10, 3), "float32", (4, 3)), "s")
    short.append(data[:5])
    with pytest.raises(ValueError, match="wrote 5 rows, expected 10"):
        short.close()


def test_ledger_lifecycle(tmp_path):
    root = StorageRoot(str(tmp_path))
    ledger = Ledger(root)
    rec = ledger.start("train", "res/layer_0", "fp1")
    assert rec.status == "running" and rec.attempt == 1
    ledger.fail(rec, ValueError("boom"))
    rec2 = ledger.start("train", "res/layer_0", "fp1")
    assert rec2.attempt == 2
    root.write_json("saes/out.json", {})
    ledger.complete(rec2, ["saes/out.json"], {"l0": 3.0})
    assert ledger.is_complete("train", "res/layer_0", "fp1")
    assert not ledger.is_complete("train", "res/layer_0", "fp2")
    on_disk = json.loads((tmp_path / "state/train/res/layer_0.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["metrics"] == {"l0": 3.0}
    root.remove("saes/out.json")
    assert not ledger.is_complete("train", "res/layer_0", "fp1")  # output deleted: must re-run
    assert [r.unit for r in ledger.records("train")] == ["res/layer_0"]


def test_sharded_array_packs_chunks_into_one_object_per_shard(tmp_path):
    arr = create_array(zarr.storage.LocalStore(str(tmp_path / "s")), None, (100, 4), "bfloat16", (16, 4),
                       shard_chunks=4)
    assert arr.chunks == (16, 4) and arr.shards == (64, 4) and write_rows_unit(arr) == 64
    w = RowWriter(arr, "s")
    data = torch.randn(100, 4)
    for lo in range(0, 100, 10):
        w.append(data[lo:lo + 10])
    w.close()
    assert sorted(p.name for p in (tmp_path / "s/c").iterdir()) == ["0", "1"]  # 2 objects, not 7
    assert torch.equal(read_rows(zarr.open_array(str(tmp_path / "s"), mode="r"), 0, 100), data.to(torch.bfloat16))
    small = create_array(zarr.storage.LocalStore(str(tmp_path / "t")), None, (20, 4), "float32", (16, 4),
                         shard_chunks=4)
    assert small.shards == (32, 4)  # never more than the array needs


def test_a_corrupt_chunk_is_named_by_array_and_chunk(tmp_path):
    arr = create_array(zarr.storage.LocalStore(str(tmp_path / "a")), None, (64, 4), "float32", (8, 4),
                       shard_chunks=4)
    arr[:] = np.arange(256, dtype=np.float32).reshape(64, 4)
    shard = tmp_path / "a/c/1/0"  # rows 32-63: chunks 4..7
    raw = bytearray(shard.read_bytes())
    raw[2 * (8 * 4 * 4 + 4) + 5] ^= 0x01  # a bit inside chunk 6's data
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError, match=rf"^{tmp_path}/a: chunk 6 \(rows 48-55\) is corrupt") as e:
        read_rows(arr, 0, 64)
    assert e.value.chunk == 6 and e.value.path == f"{tmp_path}/a"
    assert read_block(arr, 40, 48).sum() == np.arange(160, 192).sum()  # its neighbours still read
    with pytest.raises(CorruptChunkError, match="chunk 6"):
        read_block(arr, 50, 51)
