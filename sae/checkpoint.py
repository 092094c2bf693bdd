"""Where the trainer keeps its latest state, so a killed run resumes in minutes, not from scratch.

The trainer only needs `load() -> bytes | None` and `save(bytes)`; a local file is provided here, and the
train stage supplies one backed by the run's storage root (local disk or S3) without `sae/` knowing.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch


class CheckpointStore(Protocol):
    def load(self) -> bytes | None: ...

    def save(self, blob: bytes) -> None: ...


class FileCheckpoint:
    """One file, replaced atomically, so a crash mid-save leaves the previous checkpoint intact."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def save(self, blob: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def dumps(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def loads(blob: bytes, device: torch.device) -> dict[str, Any]:
    """weights_only: a checkpoint is data (tensors, numbers, strings), never code to run."""
    return torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
