"""Zarr arrays in the run's public format (docs/architecture.md, "The run layout").

Every array carries a crc32c checksum codec so a corrupted chunk fails loudly on read. bfloat16 has no zarr
dtype: it is stored as its raw bits in a uint16 array with attribute `"dtype": "bfloat16"`, so any zarr
reader opens it and the values are bit-exact.
"""
from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from storage.errors import InputError

_STORED_DTYPE = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def stored_itemsize(dtype: str) -> int:
    """Bytes one value of an activation dtype takes once stored (bfloat16 as its uint16 bits)."""
    return np.dtype(_STORED_DTYPE.get(dtype, dtype)).itemsize

# write_empty_chunks: every chunk is written, so zarr skips its per-chunk "all fill value?" scan (slow for
# uint16) and an all-zero chunk is an object like any other, not a missing one. A runtime setting, not
# stored in the metadata: whoever opens an array to write it must set it again (open_for_writing).
_WRITE_CONFIG = {"write_empty_chunks": True}


def create_array(store, name: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...],
                 attributes: dict[str, Any] | None = None, compress: bool = False,
                 shard_chunks: int = 1) -> zarr.Array:
    """Create an array at its final shape (never appended or resized later: concurrent writers are safe only
    when each owns whole chunks, whole shards on a sharded array). `dtype` may be the logical "bfloat16".

    `shard_chunks` > 1 packs that many row-chunks into one storage object (zarr's sharding codec), so a
    store holds thousands of objects, not millions, while readers still fetch single chunks; each chunk
    keeps its own crc32c, and so does the shard's index."""
    attrs = dict(attributes or {})
    stored = _STORED_DTYPE.get(dtype, dtype)
    if dtype == "bfloat16":
        attrs["dtype"] = "bfloat16"
    compressors = [ZstdCodec(level=1), Crc32cCodec()] if compress else [Crc32cCodec()]
    chunks = tuple(max(1, min(c, s)) if s > 0 else max(1, c) for c, s in zip(chunks, shape))
    shards = None
    if shard_chunks > 1 and shape[0] > chunks[0]:
        rows = min(chunks[0] * shard_chunks, -(-shape[0] // chunks[0]) * chunks[0])
        shards = (rows, *chunks[1:])
    return zarr.create_array(store=store, name=name, shape=shape, dtype=stored, chunks=chunks, shards=shards,
                             compressors=compressors, attributes=attrs, overwrite=True, fill_value=0,
                             config=_WRITE_CONFIG)


def open_for_writing(store) -> zarr.Array:
    """An array made by `create_array`, opened to write more of its storage objects exactly as its creator
    would (the same runtime config)."""
    return zarr.open_array(store=store, mode="r+").with_config(_WRITE_CONFIG)


def write_rows_unit(array: zarr.Array) -> int:
    """Rows of one storage object (a shard, else a chunk): the unit a writer must own and write whole."""
    return (array.shards or array.chunks)[0]


class CorruptChunkError(InputError):
    """A chunk whose bytes fail their checksum; names the array (its full path) and the chunk, so the run
    can point at the unit that wrote it. Reading the same bytes again fails again: an input error, never
    retried; the repair is re-running the writer."""

    def __init__(self, path: str, chunk: int, rows: tuple[int, int], detail: str):
        super().__init__(f"{path}: chunk {chunk} (rows {rows[0]}-{rows[1] - 1}) is corrupt: {detail}",
                         path=path, chunk=chunk, rows=list(rows))

    @property
    def path(self) -> str:
        return self.facts["path"]

    @property
    def chunk(self) -> int:
        return self.facts["chunk"]

    @property
    def rows(self) -> tuple[int, int]:
        return tuple(self.facts["rows"])


def array_path(array: zarr.Array) -> str:
    """Where the array lives, as a local path or a URL such as s3://bucket/prefix/... (no credentials: those
    never enter a store's URL)."""
    store, rel = array.store_path.store, array.store_path.path
    fs = getattr(store, "fs", None)
    if fs is not None:  # an fsspec store
        protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        base = f"{protocol}://{store.path}"
    else:
        base = str(store.root)
    return posixpath.join(base, rel) if rel else base


def read_block(array: zarr.Array, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as stored; a checksum failure becomes a CorruptChunkError naming the first bad chunk
    in the range (found by re-reading chunk by chunk, which costs nothing on the happy path)."""
    try:
        return array[start:stop]
    except ValueError as e:
        if "checksum" not in str(e):
            raise
        detail = str(e).split(". Stored")[0]
        chunk = array.chunks[0]
        for c in range(start // chunk, -(-stop // chunk)):
            lo, hi = c * chunk, min((c + 1) * chunk, array.shape[0])
            try:
                array[lo:hi]
            except ValueError:
                raise CorruptChunkError(array_path(array), c, (lo, hi), detail) from None
        # every chunk reads alone: the shard's own index is what failed
        shard = write_rows_unit(array)
        s = start // shard
        raise CorruptChunkError(array_path(array), start // chunk, (s * shard, min((s + 1) * shard, array.shape[0])),
                                f"{detail} (the index of the shard holding it)") from None


def logical_dtype(array: zarr.Array) -> str:
    return array.attrs.get("dtype", str(array.dtype))


def encode_rows(x: torch.Tensor, dtype: str, label: str) -> np.ndarray:
    """Torch activations -> the numpy array stored for `dtype`. float16 overflow is an error naming the
    array (label), never a silent inf."""
    if dtype == "bfloat16":
        return x.detach().to(torch.bfloat16).cpu().view(torch.uint16).numpy()
    if dtype == "float16":
        peak = float(x.detach().abs().max()) if x.numel() else 0.0
        if peak > _FLOAT16_MAX:
            raise ValueError(f"{label}: activation magnitude {peak:.3g} overflows float16 (max {_FLOAT16_MAX:.0f});"
                             f" use storage.activation_dtype bfloat16 or float32")
        return x.detach().to(torch.float16).cpu().numpy()
    return x.detach().to(torch.float32).cpu().numpy()


def decode_rows(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored numpy rows -> a torch tensor in the logical dtype (bfloat16 bits reinterpreted, not cast)."""
    t = torch.from_numpy(np.ascontiguousarray(raw))
    if dtype == "bfloat16":
        return t.view(torch.bfloat16)
    return t


def read_rows(array: zarr.Array, start: int, stop: int) -> torch.Tensor:
    return decode_rows(read_block(array, start, stop), logical_dtype(array))


class DecodedRows:
    """A read-only view of a stored activation array in its logical dtype: `.shape` and row slices give
    torch tensors, so any array consumer (the SAE trainer) reads bf16-as-uint16 stores without our code."""

    def __init__(self, array: zarr.Array):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = logical_dtype(array)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        if not isinstance(rows, slice):
            raise TypeError("DecodedRows takes a slice of rows")
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("DecodedRows reads contiguous rows only")
        return read_rows(self.array, start, stop)


class RowWriter:
    """Appends rows to a pre-sized array and writes only whole, aligned storage objects (shards, else chunks;
    plus the tail at close), so each is encoded and written once and memory stays bounded by one of them."""

    def __init__(self, array: zarr.Array, label: str):
        self.array = array
        self.label = label
        self.dtype = logical_dtype(array)
        self.chunk = write_rows_unit(array)
        self.offset = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def append(self, rows: torch.Tensor | np.ndarray) -> None:
        data = encode_rows(rows, self.dtype, self.label) if isinstance(rows, torch.Tensor) else rows
        if len(data) == 0:
            return
        self._pending.append(data)
        self._pending_rows += len(data)
        if self._pending_rows >= self.chunk:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        n_write = len(block) if final else (len(block) // self.chunk) * self.chunk
        if self.offset + n_write > self.array.shape[0]:
            raise ValueError(f"{self.label}: {self.offset + n_write} rows written into an array of "
                             f"{self.array.shape[0]} rows")
        if n_write:
            self.array[self.offset:self.offset + n_write] = block[:n_write]
            self.offset += n_write
        rest = block[n_write:]
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)

    def close(self) -> int:
        self._flush(final=True)
        if self.offset != self.array.shape[0]:
            raise ValueError(f"{self.label}: wrote {self.offset} rows, expected {self.array.shape[0]}")
        return self.offset
