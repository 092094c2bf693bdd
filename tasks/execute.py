"""Running one unit: the ledger bookkeeping around the stage function, the same with or without Ray.

The record turns `complete` only after the stage function returned, i.e. after all its outputs are written.
"""
from __future__ import annotations

from storage.ledger import Ledger, UnitRecord
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.registry import get_stage
from tasks.units import UnitSpec


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot, run_id: str = "", node: str = "") -> UnitRecord:
    ledger = Ledger(root)
    record = ledger.start(spec.stage, spec.unit, spec.fingerprint, run_id=run_id, node=node)
    try:
        result = get_stage(spec.stage).run(cfg, spec, root)
    except BaseException as exc:
        ledger.fail(record, exc)
        raise
    return ledger.complete(record, result.outputs, result.metrics)
