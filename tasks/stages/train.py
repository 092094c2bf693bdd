"""Stage 4: every SAE of one (site, layer) -- the whole sweep -- trained on one stream read once.

The unit only adapts storage to the public training API in `sae/` (which knows nothing of zarr): the
shuffled array in, a checkpoint store on the run's root, folded SAEs out, written in Gemma Scope's and
SAELens's formats. A retried unit (a Prefect retry, or Ray re-running a task whose worker died) finds the
checkpoint and resumes from it; the checkpoint is deleted once every SAE is written.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from sae import SweepPoint, save_gemma_scope_npz, save_saelens, train_saes
from storage import layout
from storage.arrays import DecodedRows
from storage.errors import InputError
from storage.fingerprint import fingerprint
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.lm.model import pick_device
from tasks.lm.sites import TL_HOOKS
from tasks.units import FORMAT_VERSION, PlanContext, Planned, UnitResult, UnitSpec


def sae_dir(site: str, layer: int, point: SweepPoint) -> str:
    """The run-layout folder of one SAE of the sweep."""
    return layout.sae_dir(site, layer, point.width, point.slug)


def plan_units(ctx: PlanContext, planned: Planned) -> list[UnitSpec]:
    """One unit per (site, layer): its whole sweep on the one shuffled stream."""
    shuffle = {u.unit: u for u in planned["shuffle"]}
    units = []
    for site, layer, w in ctx.groups():
        sh = shuffle[layout.site_layer(site, layer)]
        units.append(UnitSpec(stage="train", unit=sh.unit, site=site, layer=layer, wave=w, deps=[sh.key],
                              model_name=ctx.model_name,
                              fingerprint=fingerprint("train", FORMAT_VERSION, sh.fingerprint,
                                                      ctx.cfg.sae.shaping_fields(), ctx.cfg.corpus.ctx)))
    return units


# glibc serves an allocation above its mmap threshold (raised dynamically up to 32 MiB) by a fresh mapping and
# unmaps it on free, so each [batch, width] temporary of a training step page-faults in again every step;
# keeping them in the heap made sparse steps at width 64k 1.24x faster on CPU (BENCHMARKS.md, "Issue 12")
_GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20
_KEEP_BIG_BUFFERS = {"MALLOC_MMAP_THRESHOLD_": str(16 * 2**30), "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)}


def worker_env(cfg: StagesConfig) -> dict[str, str]:
    """The train workers' glibc settings, where a step's [batch, width] fp32 temporaries are big enough to
    be mapped afresh each step; smaller sweeps (the tiny default) stay on the run's own workers, which a
    runtime environment of their own would keep apart and start cold."""
    biggest = 4 * cfg.sae.batch_size * max(cfg.sae.widths)
    return dict(_KEEP_BIG_BUFFERS) if biggest > _GLIBC_MAX_MMAP_THRESHOLD else {}


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> UnitResult:
    return train_site_layer(cfg, spec.site, spec.layer, spec.model_name, root)


class RootCheckpoint:
    """The trainer's checkpoint store on the run's storage root: atomic replace on disk, one PUT on S3."""

    def __init__(self, root: StorageRoot, rel: str) -> None:
        self.root, self.rel = root, rel

    def load(self) -> bytes | None:
        return self.root.read_optional(self.rel)

    def save(self, blob: bytes) -> None:
        self.root.write_bytes(self.rel, blob)


def norm_scale(attrs: dict) -> float:
    """C = sqrt(E||x_raw||^2): dividing by it gives activations of unit mean squared norm, so one lambda
    means the same sparsity pressure at every site and layer."""
    return math.sqrt(attrs["mean_sq_norm"])


def train_site_layer(cfg: StagesConfig, site: str, layer: int, model_name: str, root: StorageRoot) -> UnitResult:
    group = zarr.open_group(store=root.zarr_store(layout.shuffled(site, layer), read_only=True), mode="r")
    x = DecodedRows(group["x"])
    attrs = dict(group.attrs)
    if x.shape[0] < cfg.sae.batch_size:
        raise InputError(f"{layout.shuffled(site, layer)}: {x.shape[0]} rows, fewer than one batch "
                         f"(sae.batch_size={cfg.sae.batch_size})")
    scale = norm_scale(attrs)
    ckpt = layout.checkpoint(site, layer)
    trained = train_saes(x, None, cfg.sae, norm_scale=scale, device=str(pick_device(cfg.model.device)),
                         checkpoint=RootCheckpoint(root, ckpt))
    outputs, metrics = [], {}
    for t in trained:
        rel = sae_dir(site, layer, t.point)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "sae"
            folder.mkdir()
            if t.sae.gemma_scope_form:
                save_gemma_scope_npz(t.sae, folder / "params.npz")
            save_saelens(t.sae, folder, model_name=model_name, hook_name=TL_HOOKS[site].format(L=layer),
                         context_size=cfg.corpus.ctx, prepend_bos=True,
                         extra_metadata={"scopeflow_site": site, "scopeflow_layer": layer,
                                         "scopeflow_architecture": t.architecture, "sparsity": t.sparsity,
                                         "norm_scale": scale, "train_tokens": t.tokens})
            rows = [dict(r, site=site, layer=layer) for r in t.log]
            pq.write_table(pa.Table.from_pylist(rows), folder / layout.TRAIN_LOG)
            root.upload_dir(folder, rel)
        outputs.append(rel)
        metrics[rel.split(f"layer_{layer}/", 1)[1]] = {"steps": t.steps, "tokens": t.tokens,
                                                       "final_l0": t.log[-1]["l0"] if t.log else None}
    root.remove(ckpt.rsplit("/", 1)[0])  # every SAE is written: the Adam state (2x the parameters) is dead weight
    return UnitResult(outputs=outputs, metrics={"resumed_from_step": trained[0].resumed_from, "saes": metrics})
