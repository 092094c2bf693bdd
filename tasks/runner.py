"""The runner: walks the plan as a graph of units and submits each one as soon as the units it reads are
settled, instead of waiting for whole stages (docs/architecture.md, "How a unit runs").

It is plain Python: an `Executor` runs units (Prefect tasks on Ray in the flows, `InProcessExecutor` in
tests and notebooks), the ledger says what is complete, and the runner only decides what to submit when.
Storage waves add one ordering the data does not: a wave's first per-wave stage (extraction) waits until
the previous wave has settled and its activations are freed, so at most one wave's activations exist.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.execute import run_unit
from tasks.registry import STAGE_NAMES, STAGES
from tasks.schedule import RunState, Selector, decide
from tasks.units import Planned, UnitSpec

Outcome = str  # "complete" | "failed" | "skipped" | "blocked" | "interrupted"


class Executor(Protocol):
    def submit(self, spec: UnitSpec, upstream: list[Any], done: Callable[[], None]) -> Any:
        """Start the unit; call `done()` (from any thread) once it has finished, however it ended.
        `upstream` holds the handles of the units it reads that ran in this run. Returns a handle."""

    def cancel(self, handle: Any) -> None:
        """Stop a unit that is still running (a no-op once it has finished)."""


class InProcessExecutor:
    """Runs each unit at once in this process: the ledger bookkeeping without Prefect or Ray."""

    def __init__(self, cfg: StagesConfig, root: StorageRoot) -> None:
        self.cfg, self.root = cfg, root

    def submit(self, spec: UnitSpec, upstream: list[Any], done: Callable[[], None]) -> Any:
        try:
            run_unit(self.cfg, spec, self.root)
        except Exception:  # recorded failed in the ledger, which the runner reads
            pass
        finally:
            done()
        return spec.key

    def cancel(self, handle: Any) -> None:
        return None


class Interrupted(Exception):
    """The run was asked to stop; the units it had running are recorded `interrupted`."""


@dataclass
class Runner:
    """One run's walk over the plan. `state` is shared by every `run` call of the run (the first stage, then
    the rest once it is planned), so a unit whose input ran earlier in the run runs too."""

    ledger: Ledger
    executor: Executor
    selectors: list[Selector] = field(default_factory=list)
    state: RunState = field(default_factory=RunState)
    #: delete a storage wave's freeable outputs once the wave's other units are complete
    free_waves: bool = False
    #: called after each unit settles, with its outcome (progress bars, dashboard artifacts)
    on_settled: Callable[[UnitSpec, Outcome], None] | None = None
    #: called when a unit is submitted
    on_submitted: Callable[[UnitSpec], None] | None = None
    #: called with a line for people (waves freed, inputs restored)
    on_note: Callable[[str], None] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        """Ask the run to stop: nothing more is submitted and running units are cancelled. Thread-safe."""
        self._stop.set()

    def run(self, plan: Planned, all_units: dict[str, UnitSpec] | None = None) -> dict[str, Outcome]:
        """Settle every unit of `plan`; `all_units` (by key) also holds units of earlier phases that these
        read, for restoring freed inputs. Returns each planned unit's outcome."""
        order = [s for name in STAGE_NAMES for s in plan.get(name, [])]
        by_key = {**(all_units or {}), **{s.key: s for s in order}}
        return _Walk(self, order, by_key).run()

    def _note(self, line: str) -> None:
        if self.on_note is not None:
            self.on_note(line)


class _Walk:
    """The mutable bookkeeping of one `Runner.run` call."""

    def __init__(self, runner: Runner, order: list[UnitSpec], by_key: dict[str, UnitSpec]) -> None:
        self.r, self.order, self.by_key = runner, order, by_key
        self.planned = {s.key for s in order}
        self.outcome: dict[str, Outcome] = {}
        self.handles: dict[str, Any] = {}
        self.running: set[str] = set()
        self.restoring: set[str] = set()
        self.done_q: queue.Queue[str] = queue.Queue()
        wave_stages = [n for n in STAGE_NAMES if STAGES[n].per_wave]
        self.gate_stage = wave_stages[0] if wave_stages else None
        self.waves = sorted({s.wave for s in order if s.stage in wave_stages})
        self.wave_open = {w: i == 0 for i, w in enumerate(self.waves)}
        self.closed_waves: set[int] = set()

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Outcome]:
        try:
            self._advance()
            while len(self.outcome) < len(self.order):
                if self.r._stop.is_set():
                    raise Interrupted("stopped on request")
                try:
                    key = self.done_q.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._finished(key)
                self._advance()
        except BaseException:
            self._interrupt()
            raise
        return self.outcome

    def _settled(self, key: str) -> bool:
        """A unit this walk does not plan (an earlier phase's) settled long ago."""
        return key not in self.planned or key in self.outcome

    def _advance(self) -> None:
        """Submit, skip or block every unit whose inputs have settled, in plan order; repeat until nothing
        changes (a skip can make its dependents ready)."""
        progress = True
        while progress and not self.r._stop.is_set():
            progress = False
            for spec in self.order:
                if spec.key in self.outcome or spec.key in self.running or not self._ready(spec):
                    continue
                progress |= self._start(spec)
            progress |= self._close_waves()

    def _ready(self, spec: UnitSpec) -> bool:
        """Its inputs have settled (and any being restored are back), and its wave is open."""
        if not all(self._settled(d) and d not in self.running for d in spec.deps):
            return False
        return spec.stage != self.gate_stage or self.wave_open.get(spec.wave, True)

    def _start(self, spec: UnitSpec) -> bool:
        state = self.r.state
        decision = decide(spec, self.r.ledger, state, self.r.selectors)
        if decision != "run":
            self._settle(spec, "skipped" if decision == "skip" else "blocked")
            return True
        freed = [self.by_key[d] for d in spec.deps if d in self.by_key and self._is_freed(self.by_key[d])]
        if freed:
            for dep in freed:
                self._restore(dep)
            return False
        self._submit(spec)
        return True

    def _is_freed(self, spec: UnitSpec) -> bool:
        return spec.key not in self.restoring and self.r.ledger.is_freed(spec.stage, spec.unit, spec.fingerprint)

    def _restore(self, spec: UnitSpec) -> None:
        """Re-create a freed input (same fingerprint, same bytes) before the unit that reads it; its own
        freed inputs first."""
        if spec.key in self.restoring or spec.key in self.running or any(d in self.running for d in spec.deps):
            return
        freed = [self.by_key[d] for d in spec.deps if d in self.by_key and self._is_freed(self.by_key[d])]
        if freed:
            for dep in freed:
                self._restore(dep)
            return
        self.restoring.add(spec.key)
        self.r._note(f"{spec.stage}: restoring freed unit {spec.unit}")
        self._submit(spec)

    def _submit(self, spec: UnitSpec) -> None:
        upstream = [self.handles[d] for d in spec.deps if d in self.handles]
        if self.r.on_submitted is not None:
            self.r.on_submitted(spec)
        key = spec.key
        self.running.add(key)
        try:
            self.handles[key] = self.r.executor.submit(spec, upstream, lambda: self.done_q.put(key))
        except BaseException:
            self.running.discard(key)
            raise

    # ------------------------------------------------------------------ outcomes

    def _finished(self, key: str) -> None:
        self.running.discard(key)
        spec = self.by_key[key]
        ok = self.r.ledger.is_complete(spec.stage, spec.unit, spec.fingerprint)
        if key in self.restoring:
            # a restore counts as no change; if it fails the unit that needed it is blocked behind it
            if not ok:
                self.r.state.failed.add(key)
                self.restoring.discard(key)
            return
        if ok:
            self.r.state.ran.add(key)
        else:
            self.r.state.failed.add(key)
        self._settle(spec, "complete" if ok else "failed")

    def _settle(self, spec: UnitSpec, outcome: Outcome) -> None:
        self.outcome[spec.key] = outcome
        if self.r.on_settled is not None:
            self.r.on_settled(spec, outcome)

    def _close_waves(self) -> bool:
        """Once an open wave has settled, free its activations (with a storage budget) and open the next."""
        changed = False
        for i, wave in enumerate(self.waves):
            if wave in self.closed_waves or not self.wave_open[wave]:
                continue
            members = [s for s in self.order if s.wave == wave and STAGES[s.stage].per_wave]
            if not all(s.key in self.outcome and s.key not in self.running for s in members):
                continue
            self.closed_waves.add(wave)
            if self.r.free_waves:
                self._free(wave, members)
            if i + 1 < len(self.waves):
                self.wave_open[self.waves[i + 1]] = changed = True
        return changed

    def _free(self, wave: int, members: list[UnitSpec]) -> None:
        """Delete a wave's freeable outputs once every unit of it that keeps its outputs is complete; a wave
        with a failed unit keeps them, so re-running it needs no re-extraction."""
        ledger = self.r.ledger
        kept = [s for s in members if not STAGES[s.stage].freed_by_wave]
        if not all(ledger.is_complete(s.stage, s.unit, s.fingerprint) for s in kept):
            self.r._note(f"wave {wave + 1}: not every SAE is evaluated; its activations are kept")
            return
        for s in reversed(members):
            if STAGES[s.stage].freed_by_wave:
                ledger.free(s.stage, s.unit)
        self.r._note(f"wave {wave + 1}: activations freed")

    def _interrupt(self) -> None:
        """Cancel what runs and record it `interrupted`, never left `running`."""
        self.r._stop.set()
        for key in list(self.running):
            self.r.executor.cancel(self.handles[key])
        for key in list(self.running):
            spec = self.by_key[key]
            if self.r.ledger.interrupt(spec.stage, spec.unit):
                self.r.state.interrupted.add(key)
            self._settle(spec, "interrupted")
        self.running.clear()


# The runners of this driver process by run id. A flow that walks a runner looks it up here: Prefect ships
# a flow's function (by value, with the globals it reads) to every Ray worker, and a runner (queues, locks,
# callbacks) does not pickle, while these functions pickle by reference.
_ACTIVE: dict[str, Runner] = {}


def register_runner(run_id: str, runner: Runner) -> None:
    _ACTIVE[run_id] = runner


def runner_for(run_id: str) -> Runner:
    return _ACTIVE[run_id]


def forget_runner(run_id: str) -> None:
    _ACTIVE.pop(run_id, None)
