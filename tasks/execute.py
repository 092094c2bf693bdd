"""Running one unit: the ledger bookkeeping around the stage function, the same with or without Ray.

The record turns `complete` only after the stage function returned, i.e. after all its outputs are written.
The unit reads the embedded assets from its node's own cache, filled from the storage root when it lacks them
(docs/architecture.md, "Scale"): never from the driver's disk.
"""
from __future__ import annotations

from storage.ledger import Ledger, UnitRecord
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.lm.embedded import assets_source
from tasks.registry import get_stage
from tasks.units import UnitSpec


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot, run_id: str = "", node: str = "") -> UnitRecord:
    ledger = Ledger(root)
    record = ledger.start(spec.stage, spec.unit, spec.fingerprint, run_id=run_id, node=node)
    try:
        with assets_source(root):
            result = get_stage(spec.stage).run(cfg, spec, root)
    except BaseException as exc:
        ledger.fail(record, exc)
        raise
    return ledger.complete(record, result.outputs, result.metrics)
