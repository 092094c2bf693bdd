"""The unit ledger: `state/{stage}/{unit}.json`, the source of truth for what is done.

A reader trusts only outputs whose record says `complete` with the fingerprint it expects; Prefect's own
history is for people, and survives nothing we rely on.
"""
from __future__ import annotations

import os
import socket
import traceback
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

from storage import layout
from storage.errors import is_input_error
from storage.root import StorageRoot

Status = Literal["running", "complete", "failed", "interrupted"]


class UnitError(BaseModel):
    type: str
    message: str
    traceback: str = ""
    kind: Literal["input", "transient"] = Field("transient", description="input errors are not retried")
    facts: dict[str, Any] = Field(default_factory=dict, description="what the run reasons about, as fields "
                                                                     "(a corrupt chunk's array path and index)")


class UnitRecord(BaseModel):
    stage: str
    unit: str
    status: Status
    fingerprint: str
    attempt: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    host: str = ""
    pid: int | None = None
    node: str = Field("", description="the Ray node it ran on, where it ran under Ray")
    run_id: str = Field("", description="the run that started it; a `running` record of a run that no longer "
                                        "holds the root is stale")
    error: UnitError | None = None
    outputs: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    freed_at: datetime | None = Field(None, description="when its outputs were deleted to stay in the storage "
                                                         "budget; the unit is complete, and re-runs only if needed")

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.ended_at:
            return (self.ended_at - self.started_at).total_seconds()
        return None


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Ledger:
    def __init__(self, root: StorageRoot):
        self.root = root

    @staticmethod
    def record_path(stage: str, unit: str) -> str:
        return layout.unit_record(stage, unit)

    def get(self, stage: str, unit: str) -> UnitRecord | None:
        data = self.root.read_optional(self.record_path(stage, unit))
        return None if data is None else UnitRecord.model_validate_json(data)

    def _put(self, record: UnitRecord) -> UnitRecord:
        self.root.write_json(self.record_path(record.stage, record.unit), record.model_dump(mode="json"))
        return record

    def _complete(self, stage: str, unit: str, fingerprint: str) -> UnitRecord | None:
        """The record, if it says complete with this fingerprint."""
        rec = self.get(stage, unit)
        return rec if rec is not None and rec.status == "complete" and rec.fingerprint == fingerprint else None

    def is_complete(self, stage: str, unit: str, fingerprint: str) -> bool:
        """Complete with this fingerprint and every recorded output still present (or deliberately freed)."""
        rec = self._complete(stage, unit, fingerprint)
        return rec is not None and (rec.freed_at is not None or all(self.root.exists(p) for p in rec.outputs))

    def is_freed(self, stage: str, unit: str, fingerprint: str) -> bool:
        rec = self._complete(stage, unit, fingerprint)
        return rec is not None and rec.freed_at is not None

    def free(self, stage: str, unit: str) -> None:
        """Delete a complete unit's outputs and record that, so its dependents stay complete."""
        rec = self.get(stage, unit)
        if rec is None or rec.status != "complete" or rec.freed_at is not None:
            return
        for p in rec.outputs:
            self.root.remove(p)
        self._put(rec.model_copy(update=dict(freed_at=_now())))

    def start(self, stage: str, unit: str, fingerprint: str, run_id: str = "", node: str = "") -> UnitRecord:
        prev = self.get(stage, unit)
        attempt = (prev.attempt if prev and prev.fingerprint == fingerprint and prev.status != "complete" else 0) + 1
        return self._put(UnitRecord(stage=stage, unit=unit, status="running", fingerprint=fingerprint,
                                    attempt=attempt, started_at=_now(), host=socket.gethostname(),
                                    pid=os.getpid(), node=node, run_id=run_id))

    def interrupt(self, stage: str, unit: str) -> bool:
        """Mark a unit the driver stopped: only a record still `running` (one that completed or failed
        meanwhile keeps its outcome). Returns whether it marked one."""
        rec = self.get(stage, unit)
        if rec is None or rec.status != "running":
            return False
        self._put(rec.model_copy(update=dict(status="interrupted", ended_at=_now())))
        return True

    def complete(self, record: UnitRecord, outputs: list[str], metrics: dict[str, Any]) -> UnitRecord:
        """Called only after every output is durably written: this write is what makes them trusted."""
        done = record.model_copy(update=dict(status="complete", ended_at=_now(), outputs=outputs,
                                             metrics=metrics, error=None))
        return self._put(done)

    def fail(self, record: UnitRecord, exc: BaseException) -> UnitRecord:
        err = UnitError(type=type(exc).__name__, message=str(exc), facts=getattr(exc, "facts", {}),
                        kind="input" if is_input_error(exc) else "transient",
                        traceback="".join(traceback.format_exception(exc))[-4000:])
        return self._put(record.model_copy(update=dict(status="failed", ended_at=_now(), error=err)))

    def producer_of(self, path: str, stages: tuple[str, ...]) -> UnitRecord | None:
        """The unit whose recorded outputs hold `path` (a full path or URL under the root): who to re-run when
        a reader finds that file corrupt."""
        for stage in stages:
            for rec in self.records(stage):
                for out in rec.outputs:
                    full = self.root.path(out)
                    if path == full or path.startswith(full.rstrip("/") + "/"):
                        return rec
        return None

    def records(self, stage: str) -> list[UnitRecord]:
        """Every record of a stage; unit ids may contain '/' (site/layer), so walk the folder."""
        base = layout.stage_records(stage)
        out: list[UnitRecord] = []
        fs, prefix = self.root.fs, self.root.fs_path(base)
        if not fs.exists(prefix):
            return out
        for path in sorted(fs.find(prefix)):
            if path.endswith(".json"):
                out.append(UnitRecord.model_validate_json(fs.cat_file(path)))
        return out
