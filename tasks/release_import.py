"""Bring published SAEs (a Gemma Scope release folder) into a run and judge them exactly as the suite's own.

Gemma Scope publishes `layer_{L}/width_{W}/average_l0_{N}/params.npz` per site; the same evaluate code
(`evaluate_saes`: spliced delta loss, L0, FVU, dead/dense on the suite's held-out tokens) scores them, so
a suite's SAEs and the published ones land in one comparable table. Imported SAEs are copied under
`imports/{name}/` in both release formats, with their evaluations beside them.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sae import load_gemma_scope_npz, save_saelens
from storage import layout
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.lm.sites import TL_HOOKS
from tasks.lm.heldout import write_parquet
from tasks.stages.evaluate import evaluate_saes, shuffle_stats

RELEASE_PATTERN = re.compile(r"layer_(\d+)/width_([0-9]+[km]?)/average_l0_(\d+)/params\.npz")


@dataclass(frozen=True)
class ReleaseSAE:
    layer: int
    width_label: str
    average_l0: int
    path: Path

    @property
    def rel(self) -> str:
        return f"layer_{self.layer}/width_{self.width_label}/average_l0_{self.average_l0}"


def scan_release(folder: str | Path) -> list[ReleaseSAE]:
    """Every params.npz under `folder` in Gemma Scope's layout; any other params.npz is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: release folder not found")
    found = []
    for path in sorted(folder.rglob("params.npz")):
        rel = path.relative_to(folder).as_posix()
        m = RELEASE_PATTERN.fullmatch(rel)
        if m is None:
            raise ValueError(f"{path}: not in Gemma Scope's layout layer_{{L}}/width_{{W}}/average_l0_{{N}}/params.npz")
        found.append(ReleaseSAE(int(m.group(1)), m.group(2), int(m.group(3)), path))
    if not found:
        raise FileNotFoundError(f"{folder}: no layer_*/width_*/average_l0_*/params.npz inside")
    return sorted(found, key=lambda r: (r.layer, r.width_label, r.average_l0))


def import_release(cfg: StagesConfig, folder: str | Path, site: str, name: str, root: StorageRoot,
                   d_in: int, n_layers: int, model_name: str) -> list[dict]:
    """Copy, convert and evaluate every SAE of the release; returns the evaluation rows (also written)."""
    if not root.exists(f"{layout.TOKENS_EVAL}/zarr.json"):
        raise FileNotFoundError(f"{root.path(layout.TOKENS_EVAL)}: no held-out tokens yet; run the suite's tokenize "
                                "stage first (scopeflow run CONFIG)")
    release = scan_release(folder)
    saes = {}
    for item in release:  # check everything before writing anything
        if not 0 <= item.layer < n_layers:
            raise ValueError(f"{item.path}: layer {item.layer} is out of range for a {n_layers}-layer model")
        sae = load_gemma_scope_npz(item.path)
        if sae.d_in != d_in:
            raise ValueError(f"{item.path}: W_enc has d_in={sae.d_in}, but site {site!r} of this model is {d_in} wide")
        saes[item] = sae

    rows: list[dict] = []
    for layer in sorted({r.layer for r in release}):
        items = [r for r in release if r.layer == layer]
        for item in items:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "sae"
                out.mkdir()
                shutil.copyfile(item.path, out / "params.npz")
                save_saelens(saes[item], out, model_name=model_name, hook_name=TL_HOOKS[site].format(L=layer),
                             context_size=cfg.corpus.ctx, extra_metadata={"scopeflow_source": name,
                                                                           "release_path": item.rel})
                root.upload_dir(out, layout.import_sae_dir(name, site, item.rel))
        stats = shuffle_stats(site, layer, root)
        mean = torch.tensor(stats["mean"], dtype=torch.float64) if stats else None
        layer_rows, _ = evaluate_saes(cfg, site, layer, [saes[i] for i in items], root, dataset_mean=mean)
        for row, item in zip(layer_rows, items):
            row.update({"source": name, "width_label": item.width_label, "average_l0_label": item.average_l0,
                        "fvu_mean": "train" if stats else "held-out", "sae_path": layout.import_sae_dir(name, site, item.rel)})
        write_parquet(root, layout.import_eval_table(name, site, layer), layer_rows)
        rows.extend(layer_rows)
    return rows
