"""The suite's units, their dependencies and fingerprints.

A unit's fingerprint hashes the config fields that shape its output plus its inputs' fingerprints, like a
build system: change `sae.lr` and only train, evaluate and report change fingerprint.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from storage.fingerprint import fingerprint
from tasks.config import StagesConfig

STAGES: tuple[str, ...] = ("tokenize", "extract", "shuffle", "train", "evaluate", "report")
FORMAT_VERSION = 2  # bump when a stage's output format changes, so old outputs are not trusted


class UnitSpec(BaseModel):
    stage: str
    unit: str
    fingerprint: str
    site: str | None = None
    layer: int | None = None
    shard: int | None = None
    wave: int = Field(0, description="the storage wave it belongs to (always 0 without storage.budget_bytes)")
    deps: list[str] = Field(default_factory=list, description="keys 'stage:unit' of the units it reads")
    args: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.stage}:{self.unit}"


def site_layer_unit(site: str, layer: int) -> str:
    return f"{site}/layer_{layer}"


def shard_unit(shard: int) -> str:
    return f"shard_{shard:05d}"


def tokenize_units(cfg: StagesConfig) -> list[UnitSpec]:
    fp = fingerprint("tokenize", FORMAT_VERSION, cfg.seed, cfg.corpus, cfg.model.name_or_path, cfg.model.revision)
    return [UnitSpec(stage="tokenize", unit="corpus", fingerprint=fp)]


def downstream_units(cfg: StagesConfig, layers: list[int], n_shards: int, model_name: str,
                     tokenize: UnitSpec, waves: list[list[tuple[str, int]]] | None = None) -> dict[str, list[UnitSpec]]:
    """Every unit after tokenize; the shard count is known only once tokens exist. `waves` partitions the
    (site, layer) groups (tasks/capacity.plan_waves); each wave has extract units of its own, which run the
    model for that wave's groups only."""
    if waves is None:
        waves = [[(site, layer) for site in cfg.sites for layer in layers]]
    wave_of = {g: w for w, groups in enumerate(waves) for g in groups}
    extract_of: dict[int, list[UnitSpec]] = {}
    for w, groups in enumerate(waves):
        keys = [[site, layer] for site, layer in groups]
        prefix = "" if len(waves) == 1 else f"wave_{w:02d}/"
        extract_of[w] = [
            UnitSpec(stage="extract", unit=prefix + shard_unit(s), shard=s, wave=w, deps=[tokenize.key],
                     args={"keys": keys},
                     fingerprint=fingerprint("extract", FORMAT_VERSION, tokenize.fingerprint, cfg.model, keys,
                                             cfg.extract, cfg.storage.activation_dtype, cfg.storage.chunk_rows,
                                             cfg.storage.shard_chunks, s))
            for s in range(n_shards)]
    extract = [u for w in range(len(waves)) for u in extract_of[w]]
    shuffle, train, evaluate = [], [], []
    for site in cfg.sites:
        for layer in layers:
            unit = site_layer_unit(site, layer)
            w = wave_of[(site, layer)]
            sources = extract_of[w]
            sh = UnitSpec(stage="shuffle", unit=unit, site=site, layer=layer, wave=w, deps=[u.key for u in sources],
                          args={"n_shards": n_shards},
                          fingerprint=fingerprint("shuffle", FORMAT_VERSION, [u.fingerprint for u in sources],
                                                  cfg.shuffle.bucket_rows, cfg.sae.batch_size, cfg.storage.shard_chunks,
                                                  cfg.seed, site, layer))
            tr = UnitSpec(stage="train", unit=unit, site=site, layer=layer, wave=w, deps=[sh.key],
                          args={"model_name": model_name},
                          fingerprint=fingerprint("train", FORMAT_VERSION, sh.fingerprint, cfg.sae.shaping_fields(),
                                                  cfg.corpus.ctx))
            ev = UnitSpec(stage="evaluate", unit=unit, site=site, layer=layer, wave=w, deps=[tr.key, tokenize.key],
                          fingerprint=fingerprint("evaluate", FORMAT_VERSION, tr.fingerprint, tokenize.fingerprint,
                                                  cfg.model, cfg.evaluate))
            shuffle.append(sh)
            train.append(tr)
            evaluate.append(ev)
    report = UnitSpec(stage="report", unit="suite", deps=[u.key for u in evaluate],
                      args={"keys": [[u.site, u.layer] for u in evaluate]},
                      fingerprint=fingerprint("report", FORMAT_VERSION, [u.fingerprint for u in evaluate]))
    return {"extract": extract, "shuffle": shuffle, "train": train, "evaluate": evaluate, "report": [report]}


def suite_fingerprint(cfg: StagesConfig) -> str:
    return fingerprint(FORMAT_VERSION, cfg.model_dump(mode="json", exclude={"name"}))
