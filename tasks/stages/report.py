"""Stage 7: the whole suite's evaluations -> report/ (metrics.parquet, plots, index.html)."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from storage import layout
from storage.fingerprint import fingerprint
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.reporting import render_report
from tasks.units import FORMAT_VERSION, PlanContext, Planned, UnitResult, UnitSpec, suite_fingerprint

SUITE_UNIT = "suite"


def plan_units(ctx: PlanContext, planned: Planned) -> list[UnitSpec]:
    """One unit for the suite, after every evaluation."""
    evaluate = planned["evaluate"]
    return [UnitSpec(stage="report", unit=SUITE_UNIT, deps=[u.key for u in evaluate],
                     groups=[(u.site, u.layer) for u in evaluate],
                     fingerprint=fingerprint("report", FORMAT_VERSION, [u.fingerprint for u in evaluate]))]


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> UnitResult:
    return build_report(cfg, spec.groups, suite_fingerprint(cfg), root)


def collect_metrics(root: StorageRoot, keys: list[tuple[str, int]]) -> list[dict]:
    rows: list[dict] = []
    for site, layer in keys:
        rows.extend(pq.read_table(io.BytesIO(root.read_bytes(layout.eval_table(site, layer)))).to_pylist())
    return rows


def collect_train_logs(root: StorageRoot, rows: list[dict]) -> list[dict]:
    logs: list[dict] = []
    for r in rows:
        table = pq.read_table(io.BytesIO(root.read_bytes(f"{r['sae_path']}/{layout.TRAIN_LOG}")))
        logs.extend(dict(rec, site=r["site"], layer=r["layer"]) for rec in table.to_pylist())
    return logs


def build_report(cfg: StagesConfig, keys: list[tuple[str, int]], suite_fingerprint: str,
                 root: StorageRoot) -> UnitResult:
    rows = collect_metrics(root, keys)
    logs = collect_train_logs(root, rows)
    info = {"suite": cfg.name, "model": cfg.model.name_or_path, "sites": ", ".join(cfg.sites),
            "layers": len({k[1] for k in keys}), "SAEs": len(rows), "fingerprint": suite_fingerprint,
            "storage": root.url}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / layout.REPORT_DIR
        out.mkdir()
        render_report(rows, logs, out, title=f"scopeflow suite '{cfg.name}'", suite_info=info)
        root.upload_dir(out, layout.REPORT_DIR)
    return UnitResult(outputs=[layout.REPORT_INDEX, layout.REPORT_METRICS], metrics={"n_saes": len(rows)})
