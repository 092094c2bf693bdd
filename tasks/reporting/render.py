"""The report's entry point: evaluation rows and training logs in, `report/` files out."""

from __future__ import annotations

import pathlib

import pyarrow.parquet as pq

from .formatting import sorted_rows
from .page import index_html
from .plots import ReportData, draw_plots
from .schema import metrics_table, plain_record, with_defaults


def render_report(rows: list[dict], train_logs: list[dict], out_dir: pathlib.Path, *, title: str,
                  suite_info: dict, splitting: list[dict] = (), transfer: list[dict] = ()) -> list[pathlib.Path]:
    """Write metrics.parquet, the plots and index.html into out_dir; index.html last, once what it links exists.
    `splitting`: the inspect stage's feature-splitting rows, each with its site and layer. `transfer`: the
    rows of the further evaluation models (`rows` are the suite model's); metrics.parquet holds both."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = ReportData(rows=sorted_rows(with_defaults(plain_record(r)) for r in rows),
                      train_logs=[plain_record(rec) for rec in train_logs],
                      splitting=[plain_record(r) for r in splitting],
                      transfer=sorted_rows(with_defaults(plain_record(r)) for r in transfer))

    parquet_path = out_dir / "metrics.parquet"
    pq.write_table(metrics_table(data.rows + data.transfer), parquet_path)
    written = [parquet_path, *draw_plots(data, out_dir)]

    index_path = out_dir / "index.html"
    index_path.write_text(index_html(data, title, dict(suite_info or {})), encoding="utf-8")
    written.append(index_path)
    return written
