"""The evaluation row as the report reads it, and `metrics.parquet`, the table of those rows it writes.

Rows arrive from parquet, from tests or from a notebook, so they may hold numpy values and may predate the
baseline architectures; everything else in the report reads them only after `plain_record` and
`with_defaults`, so it sees one shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from sae.jumprelu import JumpReLUSAE

#: the suite's own architecture, and what a row without an `architecture` field is (rows from before the
#: baselines existed are JumpReLU rows)
JUMPRELU: str = JumpReLUSAE.architecture

ROW_TYPES: dict[str, pa.DataType] = {
    "site": pa.string(),
    "layer": pa.int64(),
    "model": pa.string(),
    "width": pa.int64(),
    "lambda": pa.float64(),
    "sparsity": pa.float64(),
    "architecture": pa.string(),
    "d_in": pa.int64(),
    "l0": pa.float64(),
    "fvu": pa.float64(),
    "mse": pa.float64(),
    "delta_loss": pa.float64(),
    "clean_loss": pa.float64(),
    "spliced_loss": pa.float64(),
    "dead_frac": pa.float64(),
    "dense_frac": pa.float64(),
    "n_dead": pa.int64(),
    "n_dense": pa.int64(),
    "n_tokens": pa.int64(),
    "freq_hist": pa.list_(pa.int64()),
    "freq_hist_edges": pa.list_(pa.float64()),
    "train_steps": pa.int64(),
    "train_tokens": pa.int64(),
    "sae_path": pa.string(),
}


def plain(value: Any) -> Any:
    """Numpy scalars and arrays become Python values, so pyarrow and json see one kind of input."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def plain_record(record: dict) -> dict:
    """A copy of an evaluation row or training-log record with every value `plain`."""
    return {k: plain(v) for k, v in record.items()}


def with_defaults(row: dict) -> dict:
    """Rows from before the baselines existed are JumpReLU rows whose sparsity is their lambda."""
    row = dict(row)
    row.setdefault("architecture", JUMPRELU)
    if row.get("sparsity") is None:
        row["sparsity"] = row.get("lambda")
    return row


def jumprelu_rows(rows: list[dict]) -> list[dict]:
    """The rows the per-lambda plots and summaries describe: only JumpReLU SAEs have a lambda."""
    return [r for r in rows if r.get("architecture") == JUMPRELU]


def metrics_table(rows: list[dict]) -> pa.Table:
    """Known columns get fixed types so a suite whose values all happen to be integral still reads as floats."""
    keys = [k for k in ROW_TYPES if any(k in r for r in rows)] if rows else list(ROW_TYPES)
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    arrays, names = [], []
    for k in keys:
        values = [plain(r.get(k)) for r in rows]
        if k in ROW_TYPES:
            try:
                arr = pa.array(values, type=ROW_TYPES[k], from_pandas=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
                arr = pa.array(values)
        else:
            arr = pa.array(values)
        arrays.append(arr)
        names.append(k)
    return pa.Table.from_arrays(arrays, names=names)
