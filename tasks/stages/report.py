"""Stage 7: the whole suite's evaluations and latents -> report/ (metrics.parquet, plots, index.html, and the
latent browser latents.html with its data scripts under latents/)."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from storage import layout
from storage.fingerprint import fingerprint
from storage.root import StorageRoot
from tasks.config import SUITE_MODEL, StagesConfig
from tasks.latent_tables import SaeLatents, decode_tokens, load_sae_latents
from tasks.lm.model import load_tokenizer
from tasks.reporting import LATENTS_PAGE, render_report, sae_script, write_latent_browser
from tasks.units import FORMAT_VERSION, PlanContext, Planned, UnitResult, UnitSpec, suite_fingerprint

SUITE_UNIT = "suite"


def plan_units(ctx: PlanContext, planned: Planned) -> list[UnitSpec]:
    """One unit for the suite, after every evaluation and inspection."""
    evaluate, inspect = planned["evaluate"], planned["inspect"]
    return [UnitSpec(stage="report", unit=SUITE_UNIT, deps=[u.key for u in evaluate + inspect],
                     groups=[(u.site, u.layer) for u in evaluate],
                     fingerprint=fingerprint("report", FORMAT_VERSION, [u.fingerprint for u in evaluate],
                                             [u.fingerprint for u in inspect]))]


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> UnitResult:
    return build_report(cfg, spec.groups, suite_fingerprint(cfg), root)


def collect_evaluations(root: StorageRoot, keys: list[tuple[str, int]]) -> tuple[list[dict], list[dict]]:
    """The evaluation rows of the suite's own model (rows from before `evaluate.models` name none), and those
    of the further models of `evaluate.models` (an instruction-tuned variant, say)."""
    own: list[dict] = []
    further: list[dict] = []
    for site, layer in keys:
        for r in pq.read_table(io.BytesIO(root.read_bytes(layout.eval_table(site, layer)))).to_pylist():
            (own if r.get("model", SUITE_MODEL) == SUITE_MODEL else further).append(r)
    return own, further


def collect_metrics(root: StorageRoot, keys: list[tuple[str, int]]) -> list[dict]:
    """The evaluation rows of the suite's own model."""
    return collect_evaluations(root, keys)[0]


def collect_train_logs(root: StorageRoot, rows: list[dict]) -> list[dict]:
    logs: list[dict] = []
    for r in rows:
        table = pq.read_table(io.BytesIO(root.read_bytes(f"{r['sae_path']}/{layout.TRAIN_LOG}")))
        logs.extend(dict(rec, site=r["site"], layer=r["layer"]) for rec in table.to_pylist())
    return logs


def collect_splitting(root: StorageRoot, keys: list[tuple[str, int]]) -> list[dict]:
    """The inspect stage's feature-splitting rows of every (site, layer) that has them, with site and layer."""
    rows: list[dict] = []
    for site, layer in keys:
        path = layout.latent_splitting(site, layer)
        if (data := root.read_optional(path)) is not None:
            table = pq.read_table(io.BytesIO(data))
            rows.extend(dict(r, site=site, layer=layer) for r in table.to_pylist())
    return rows


def stored_script(root: StorageRoot, s: SaeLatents) -> str:
    """The SAE's browser script as its inspect unit wrote it; rendered here for latents written before inspect
    wrote one."""
    path = f"{layout.latents_dir(s.site, s.layer, s.width, s.setting)}/{layout.LATENT_BROWSER_DATA}"
    stored = root.read_optional(path)
    return sae_script(s) if stored is None else stored.decode("utf-8")


def build_report(cfg: StagesConfig, keys: list[tuple[str, int]], suite_fingerprint: str,
                 root: StorageRoot) -> UnitResult:
    rows, transfer = collect_evaluations(root, keys)
    logs = collect_train_logs(root, rows)
    info = {"suite": cfg.name, "model": cfg.model.name_or_path, "sites": ", ".join(cfg.sites),
            "layers": len({k[1] for k in keys}), "SAEs": len(rows), "fingerprint": suite_fingerprint,
            "storage": root.url}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / layout.REPORT_DIR
        out.mkdir()
        render_report(rows, logs, out, title=f"scopeflow suite '{cfg.name}'", suite_info=info,
                      splitting=collect_splitting(root, keys), transfer=transfer)
        latents = (load_sae_latents(root, r["site"], r["layer"], r["width"], r["sae_path"].rsplit("/", 1)[1])
                   for r in rows)  # one SAE's latents in memory at a time
        tokenizer = load_tokenizer(cfg.model)
        write_latent_browser(out, latents, lambda ids: decode_tokens(tokenizer, ids),
                             title=f"scopeflow suite '{cfg.name}': latents", script=lambda s: stored_script(root, s))
        root.upload_dir(out, layout.REPORT_DIR)
    return UnitResult(outputs=[layout.REPORT_INDEX, layout.REPORT_METRICS, f"{layout.REPORT_DIR}/{LATENTS_PAGE}"],
                      metrics={"n_saes": len(rows)})
