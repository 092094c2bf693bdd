"""A storage root (local path or s3://bucket/prefix) behind one small interface, via fsspec.

Every stage reads and writes through this so nothing in tasks/ assumes a shared local disk.
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import zarr.storage


class StorageRoot:
    """Paths are relative to the root and always use '/'. The object pickles (url + options only), so Ray
    tasks receive it as an argument and open their own filesystem handle."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.storage_options = dict(storage_options or {})
        protocol, _ = fsspec.core.split_protocol(url)
        self.protocol = protocol or "file"
        if self.protocol == "file":
            url = str(Path(fsspec.core.strip_protocol(url)).expanduser().resolve())
        self.url = url.rstrip("/")
        self._fs = None

    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options, "protocol": self.protocol, "_fs": None}

    def __repr__(self) -> str:
        return f"StorageRoot({self.url!r})"

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            self._fs = fsspec.filesystem(self.protocol, **self.storage_options)
        return self._fs

    def path(self, *parts: str) -> str:
        """Full path (local) or URL (remote) of a relative path."""
        rel = posixpath.join(*parts) if parts else ""
        return posixpath.join(self.url, rel) if rel else self.url

    def fs_path(self, rel: str) -> str:
        """The path as the fsspec filesystem names it (no protocol)."""
        return self.fs._strip_protocol(self.path(rel))

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.fs_path(rel))

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) directly under rel; empty when rel does not exist."""
        try:
            entries = self.fs.ls(self.fs_path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.fs_path(rel))

    def read_optional(self, rel: str) -> bytes | None:
        """The file's bytes, or None where there is none: one GET on an object store, where asking first
        costs a HEAD (and, for a missing key, a listing) and can be answered from a stale listing cache."""
        try:
            return self.read_bytes(rel)
        except FileNotFoundError:
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: a reader sees the old file or the new one, never half of it (rename locally; an object
        store's PUT is atomic already)."""
        target = self.fs_path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            self.fs.pipe_file(target, data)

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def remove(self, rel: str) -> None:
        """Remove a file or a whole folder; a missing path is not an error (a unit clears its own outputs
        before rewriting them)."""
        target = self.fs_path(rel)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def upload_dir(self, local_dir: str | os.PathLike, rel: str) -> None:
        """Copy a finished local folder to rel (replacing what was there)."""
        self.remove(rel)
        if self.is_local:
            dst = self.fs_path(rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copytree(local_dir, dst)
        else:
            self.fs.put(str(local_dir).rstrip("/") + "/", self.fs_path(rel), recursive=True)

    def download_dir(self, rel: str, local_dir: str | os.PathLike) -> Path:
        """A local copy of rel, for libraries that only read local files; local roots are used in place."""
        if self.is_local:
            return Path(self.fs_path(rel))
        self.fs.get(self.fs_path(rel).rstrip("/") + "/", str(local_dir), recursive=True)
        return Path(local_dir)

    def zarr_store(self, rel: str, read_only: bool = False):
        if self.is_local:
            return zarr.storage.LocalStore(self.fs_path(rel), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.path(rel), storage_options=self.storage_options,
                                                 read_only=read_only)
