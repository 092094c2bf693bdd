"""Reading documents from parquet, jsonl or txt files, local or on s3, through fsspec."""
from __future__ import annotations

import io
import json
from typing import Any, Iterator

import fsspec
import pyarrow.parquet as pq

from tasks.config import CorpusConfig
from tasks.lm.embedded import resolve_embedded

_FORMATS = (".parquet", ".jsonl", ".json", ".txt")


def expand_paths(cfg: CorpusConfig, storage_options: dict[str, Any]) -> list[str]:
    """Concrete file URLs in a stable order; embedded names resolve to their built file. A pattern that
    matches nothing is an error naming it."""
    out: list[str] = []
    for pattern in cfg.paths:
        if pattern.startswith("embedded:"):
            path = resolve_embedded(pattern)
            if path is None:
                raise ValueError(f"corpus.paths: unknown embedded corpus {pattern!r}")
            out.append(str(path))
            continue
        fs, _, paths = fsspec.get_fs_token_paths(pattern, storage_options=storage_options if "://" in pattern else None)
        files = sorted(p for p in paths if fs.isfile(p))
        if not files:
            raise FileNotFoundError(f"corpus.paths: no corpus file matches {pattern}")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        out.extend(f"{protocol}://{p}" if protocol not in ("file", "local") else p for p in files)
    for path in out:
        if not path.endswith(_FORMATS):
            raise ValueError(f"corpus.paths: {path}: unsupported format (expected one of {', '.join(_FORMATS)})")
    return out


def read_documents(path: str, text_field: str, storage_options: dict[str, Any]) -> Iterator[str]:
    opts = storage_options if "://" in path else {}
    with fsspec.open(path, "rb", **opts) as f:
        data = f.read()
    if path.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        if text_field not in table.column_names:
            raise ValueError(f"{path}: no column {text_field!r} (corpus.text_field); columns: {table.column_names}")
        yield from (t for t in table.column(text_field).to_pylist() if t)
    elif path.endswith((".jsonl", ".json")):
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(doc, dict) or text_field not in doc:
                raise ValueError(f"{path}:{lineno}: no field {text_field!r} (corpus.text_field)")
            if doc[text_field]:
                yield doc[text_field]
    else:
        for para in data.decode("utf-8").split("\n\n"):
            if para.strip():
                yield para.strip()
