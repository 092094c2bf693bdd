"""Stage 6: the whole suite's evaluations -> report/ (metrics.parquet, plots, index.html)."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.evaluate import eval_path
from tasks.reporting import render_report

REPORT_DIR = "report"


def collect_metrics(root: StorageRoot, keys: list[tuple[str, int]]) -> list[dict]:
    rows: list[dict] = []
    for site, layer in keys:
        rows.extend(pq.read_table(io.BytesIO(root.read_bytes(eval_path(site, layer)))).to_pylist())
    return rows


def collect_train_logs(root: StorageRoot, rows: list[dict]) -> list[dict]:
    logs: list[dict] = []
    for r in rows:
        table = pq.read_table(io.BytesIO(root.read_bytes(f"{r['sae_path']}/train_log.parquet")))
        logs.extend(dict(rec, site=r["site"], layer=r["layer"]) for rec in table.to_pylist())
    return logs


def build_report(cfg: StagesConfig, keys: list[tuple[str, int]], suite_fingerprint: str, root: StorageRoot) -> dict:
    rows = collect_metrics(root, keys)
    logs = collect_train_logs(root, rows)
    info = {"suite": cfg.name, "model": cfg.model.name_or_path, "sites": ", ".join(cfg.sites),
            "layers": len({k[1] for k in keys}), "SAEs": len(rows), "fingerprint": suite_fingerprint,
            "storage": root.url}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / REPORT_DIR
        out.mkdir()
        render_report(rows, logs, out, title=f"scopeflow suite '{cfg.name}'", suite_info=info)
        root.upload_dir(out, REPORT_DIR)
    return {"outputs": [f"{REPORT_DIR}/index.html", f"{REPORT_DIR}/metrics.parquet"],
            "metrics": {"n_saes": len(rows)}}
