"""Storage formats and the ledger: what other tools read without our code."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from storage.arrays import RowWriter, create_array, decode_rows, encode_rows, read_rows
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
