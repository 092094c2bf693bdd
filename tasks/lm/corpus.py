"""Reading documents from parquet, jsonl or txt files, local or on s3, through fsspec.

Bad content is an `InputError` naming the file (and line): an empty file, bytes that are not UTF-8, a jsonl
line that is not a JSON object or lacks a string text field, a parquet file that is not one or lacks the
column, a file with no document in it. `check_corpus_head` runs the same checks on the first bytes of each
file before anything starts (cheap even for a TB corpus); `read_documents` finds the rest inside the unit.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import InputError
from tasks.config import CorpusConfig
from tasks.lm.embedded import resolve_embedded

_FORMATS = (".parquet", ".jsonl", ".json", ".txt")
#: the prepare-time check reads this much of each file, of at most HEAD_FILES files (a parquet file: its footer)
HEAD_BYTES = 1 << 16
HEAD_FILES = 16
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def expand_paths(cfg: CorpusConfig, storage_options: dict[str, Any]) -> list[str]:
    return expand_path_list(cfg.paths, storage_options, "corpus.paths")


def expand_path_list(patterns: list[str], storage_options: dict[str, Any], field: str) -> list[str]:
    """Concrete file URLs in a stable order; embedded names resolve to their built file. A pattern that
    matches nothing is an error naming it and the config `field` it came from."""
    out: list[str] = []
    for pattern in patterns:
        if pattern.startswith("embedded:"):
            path = resolve_embedded(pattern)
            if path is None:
                raise InputError(f"{field}: unknown embedded corpus {pattern!r}", field=field)
            out.append(str(path))
            continue
        fs, _, paths = fsspec.get_fs_token_paths(pattern, storage_options=storage_options if "://" in pattern else None)
        files = sorted(p for p in paths if fs.isfile(p))
        if not files:
            raise InputError(f"{field}: no corpus file matches {pattern}", field=field, path=pattern)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        out.extend(f"{protocol}://{p}" if protocol not in ("file", "local") else p for p in files)
    for path in out:
        if not path.endswith(_FORMATS):
            raise InputError(f"{field}: {path}: unsupported format (expected one of {', '.join(_FORMATS)})",
                             field=field, path=path)
    return out


def _open(path: str, storage_options: dict[str, Any]):
    return fsspec.open(path, "rb", **(storage_options if "://" in path else {}))


def _utf8(path: str, data: bytes, complete: bool) -> str:
    """The text of `data` (the whole file when `complete`, else its first bytes, whose last character may be
    cut in two)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if not complete and e.reason == "unexpected end of data" and e.start >= len(data) - 3:
            return data[:e.start].decode("utf-8")
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"{path}: not valid UTF-8 at byte {e.start} (line {line}); corpus files must be UTF-8 text",
                         path=path, line=line, byte=e.start) from None


def _jsonl_text(path: str, lineno: int, line: str, text_field: str) -> str | None:
    """One jsonl line's text; None for a blank line or an empty or null text."""
    if not line.strip():
        return None
    where = f"{path}:{lineno}"
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg})", path=path, line=lineno) from None
    if not isinstance(doc, dict):
        raise InputError(f"{where}: not a JSON object (got {_JSON_TYPES.get(type(doc), type(doc).__name__)}); each "
                         f"line must be an object with a {text_field!r} field (corpus.text_field)", path=path, line=lineno)
    if text_field not in doc:
        fields = ", ".join(repr(k) for k in list(doc)[:6]) + (", ..." if len(doc) > 6 else "")
        raise InputError(f"{where}: no field {text_field!r} (corpus.text_field); the line has {fields or 'no fields'}",
                         path=path, line=lineno, field="corpus.text_field")
    text = doc[text_field]
    if text is not None and not isinstance(text, str):
        raise InputError(f"{where}: field {text_field!r} is not a string (got {_JSON_TYPES.get(type(text), type(text).__name__)}) "
                         f"(corpus.text_field)", path=path, line=lineno, field="corpus.text_field")
    return text or None


def _jsonl_lines(text: str) -> list[str]:
    """JSON Lines split on '\\n' only (a JSON string may hold U+2028 and other characters splitlines cuts at)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _parquet(path: str, source, text_field: str) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a parquet file ({str(e).splitlines()[0]})", path=path) from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise InputError(f"{path}: no column {text_field!r} (corpus.text_field); columns: {schema.names}",
                         path=path, field="corpus.text_field")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"{path}: column {text_field!r} holds {kind}, not strings (corpus.text_field)",
                         path=path, field="corpus.text_field")
    return pf


def _no_documents(path: str, text_field: str) -> InputError:
    if path.endswith(".txt"):
        return InputError(f"{path}: no text, only whitespace (a txt file holds one document per blank-line-separated "
                          f"paragraph)", path=path)
    return InputError(f"{path}: no documents: every {text_field!r} is empty or missing (corpus.text_field)",
                      path=path, field="corpus.text_field")


def _documents(path: str, data: bytes, text_field: str, complete: bool = True) -> Iterator[str]:
    """The documents of a file's bytes (`complete`: the whole file; else only its first bytes, whose last
    jsonl line or txt paragraph may be cut and is left out)."""
    if not data:
        raise InputError(f"{path}: empty file", path=path)
    if path.endswith(".parquet"):
        pf = _parquet(path, io.BytesIO(data), text_field)
        yield from (t for t in pf.read(columns=[text_field]).column(text_field).to_pylist() if t)
        return
    text = _utf8(path, data, complete)
    if path.endswith((".jsonl", ".json")):
        lines = _jsonl_lines(text)
        if not complete and not text.endswith("\n"):
            lines = lines[:-1]
        for lineno, line in enumerate(lines, 1):
            doc = _jsonl_text(path, lineno, line, text_field)
            if doc:
                yield doc
    else:
        paras = text.split("\n\n")
        if not complete:
            paras = paras[:-1]
        for para in paras:
            if para.strip():
                yield para.strip()


def read_documents(path: str, text_field: str, storage_options: dict[str, Any]) -> Iterator[str]:
    with _open(path, storage_options) as f:
        data = f.read()
    n = 0
    for doc in _documents(path, data, text_field):
        n += 1
        yield doc
    if n == 0:
        raise _no_documents(path, text_field)


def check_corpus_head(path: str, text_field: str, storage_options: dict[str, Any], head_bytes: int = HEAD_BYTES) -> None:
    """What can be checked of one corpus file cheaply, before any unit runs: it is not empty, a parquet file's
    footer and text column, and the first `head_bytes` of a jsonl or txt file (UTF-8, every whole jsonl line;
    a file that fits there is checked whole). Raises InputError naming the file (and line)."""
    with _open(path, storage_options) as f:
        if path.endswith(".parquet"):
            magic = f.read(4)
            if not magic:
                raise InputError(f"{path}: empty file", path=path)
            if magic != b"PAR1":
                raise InputError(f"{path}: not a parquet file (it does not start with the bytes PAR1)", path=path)
            f.seek(0)
            _parquet(path, f, text_field)
            return
        data = f.read(head_bytes + 1)
    complete = len(data) <= head_bytes
    found = sum(1 for _ in _documents(path, data[:head_bytes], text_field, complete))  # every whole line checked
    if complete and not found:
        raise _no_documents(path, text_field)


def check_corpus_heads(paths: list[str], text_field: str, storage_options: dict[str, Any]) -> None:
    """`check_corpus_head` on the first HEAD_FILES files (a corpus of thousands of shards costs no more)."""
    for path in paths[:HEAD_FILES]:
        check_corpus_head(path, text_field, storage_options)


def _conversation(where: str, value: Any, field: str) -> list[dict[str, str]]:
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise InputError(f"{where}: field {field!r} is not a conversation (a non-empty list of {{\"role\", "
                         f"\"content\"}} objects with string values)", field=field)
    return [{"role": m["role"], "content": m["content"]} for m in value]


def read_conversations(path: str, field: str, storage_options: dict[str, Any]) -> Iterator[list[dict[str, str]]]:
    """The conversations of a jsonl file (one object a line) or a parquet file (a list column), each a list
    of {role, content}; bad content is an InputError naming the file and line."""
    with _open(path, storage_options) as f:
        data = f.read()
    if path.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        if field not in table.column_names:
            raise InputError(f"{path}: no column {field!r}; columns: {table.column_names}", path=path, field=field)
        for i, value in enumerate(table.column(field).to_pylist()):
            yield _conversation(f"{path}: row {i}", value, field)
        return
    if not path.endswith((".jsonl", ".json")):
        raise InputError(f"{path}: conversations are read from jsonl or parquet files, not {Path(path).suffix}",
                         path=path)
    for lineno, line in enumerate(_jsonl_lines(_utf8(path, data, True)), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})", path=path, line=lineno) from None
        if not isinstance(doc, dict) or field not in doc:
            raise InputError(f"{path}:{lineno}: no field {field!r}", path=path, line=lineno, field=field)
        yield _conversation(f"{path}:{lineno}", doc[field], field)
