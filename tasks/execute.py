"""Running one unit: the ledger bookkeeping around the stage function, the same with or without Ray.

The record turns `complete` only after the stage function returned, i.e. after all its outputs are written.
"""
from __future__ import annotations

from storage.ledger import Ledger, UnitRecord
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.plan import UnitSpec


def _dispatch(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> dict:
    if spec.stage == "tokenize":
        from tasks.tokenize import tokenize_corpus
        return tokenize_corpus(cfg, root)
    if spec.stage == "extract":
        from tasks.extract import extract_shard
        return extract_shard(cfg, spec.shard, [(site, layer) for site, layer in spec.args["keys"]], root)
    if spec.stage == "shuffle":
        from tasks.shuffle import shuffle_site_layer
        # the source fingerprint ties the shuffled data to the exact shards it came from
        return shuffle_site_layer(cfg, spec.site, spec.layer, spec.args["n_shards"], spec.fingerprint, root)
    if spec.stage == "train":
        from tasks.train import train_site_layer
        return train_site_layer(cfg, spec.site, spec.layer, spec.args["model_name"], root)
    if spec.stage == "evaluate":
        from tasks.evaluate import evaluate_site_layer
        return evaluate_site_layer(cfg, spec.site, spec.layer, root)
    if spec.stage == "report":
        from tasks.report import build_report
        from tasks.plan import suite_fingerprint
        return build_report(cfg, [tuple(k) for k in spec.args["keys"]], suite_fingerprint(cfg), root)
    raise ValueError(f"unknown stage {spec.stage!r}")


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> UnitRecord:
    ledger = Ledger(root)
    record = ledger.start(spec.stage, spec.unit, spec.fingerprint)
    try:
        result = _dispatch(cfg, spec, root)
    except BaseException as exc:
        ledger.fail(record, exc)
        raise
    return ledger.complete(record, result["outputs"], result.get("metrics", {}))
