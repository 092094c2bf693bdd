"""The runner walks the plan as a graph of units: a unit starts once the units it reads are settled, a
failure blocks only what depends on it, storage waves run one after another and are freed, freed inputs
are restored, and a stop cancels and records what runs. A hand-driven executor writes real ledger records,
so these run in milliseconds without Prefect, Ray or a model."""
from __future__ import annotations

import threading

import pytest

from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.runner import Interrupted, Runner
from tasks.schedule import Selector
from tasks.units import UnitSpec

GROUPS = [("res", 0), ("res", 1)]


def _plan(waves: int = 1) -> dict[str, list[UnitSpec]]:
    """tokenize -> 2 extract shards per wave -> per group shuffle -> train -> evaluate -> report."""
    wave_of = {g: (i if waves > 1 else 0) for i, g in enumerate(GROUPS)}
    extract = [UnitSpec(stage="extract", unit=f"wave_{w:02d}/shard_{s:05d}", fingerprint=f"x{w}{s}", shard=s, wave=w,
                        deps=["tokenize:corpus"]) for w in range(waves) for s in range(2)]
    plan = {"tokenize": [UnitSpec(stage="tokenize", unit="corpus", fingerprint="t")], "extract": extract,
            "shuffle": [], "train": [], "evaluate": []}
    for site, layer in GROUPS:
        unit, w = f"{site}/layer_{layer}", wave_of[(site, layer)]
        plan["shuffle"].append(UnitSpec(stage="shuffle", unit=unit, site=site, layer=layer, wave=w, fingerprint="s" + unit,
                                        deps=[u.key for u in extract if u.wave == w]))
        plan["train"].append(UnitSpec(stage="train", unit=unit, site=site, layer=layer, wave=w, fingerprint="r" + unit,
                                      deps=[f"shuffle:{unit}"]))
        plan["evaluate"].append(UnitSpec(stage="evaluate", unit=unit, site=site, layer=layer, wave=w,
                                         fingerprint="e" + unit, deps=[f"train:{unit}", "tokenize:corpus"]))
    plan["report"] = [UnitSpec(stage="report", unit="suite", fingerprint="p", deps=[u.key for u in plan["evaluate"]])]
    return plan


class HandDriven:
    """An executor whose units end when the test says so (or at once, for `auto` stages)."""

    def __init__(self, root: StorageRoot, auto: set[str] = frozenset(), fail: set[str] = frozenset()):
        self.root, self.ledger = root, Ledger(root)
        self.auto, self.fail = set(auto), set(fail)
        self.running: dict[str, tuple] = {}
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.lock = threading.Lock()

    def submit(self, spec, upstream, done):
        record = self.ledger.start(spec.stage, spec.unit, spec.fingerprint)
        with self.lock:
            self.submitted.append(spec.key)
            self.running[spec.key] = (spec, record, done)
        if spec.stage in self.auto or spec.key in self.auto:
            self.finish(spec.key)
        return spec.key

    def finish(self, key: str) -> None:
        with self.lock:
            spec, record, done = self.running.pop(key)
        if key in self.fail:
            self.ledger.fail(record, ValueError(f"{key} failed"))
        else:
            out = f"out/{spec.stage}/{spec.unit}"
            self.root.write_bytes(out, b"x")
            self.ledger.complete(record, [out], {})
        done()

    def cancel(self, handle):
        self.cancelled.append(handle)


def _run_in_thread(runner: Runner, plan: dict) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def go():
        try:
            out["outcome"] = runner.run(plan)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out


def _wait_for(pred, timeout: float = 5.0) -> None:
    ev = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        ev.wait(0.01)
    raise AssertionError("condition not reached")


@pytest.fixture
def root(tmp_path) -> StorageRoot:
    return StorageRoot(str(tmp_path / "run"))


def test_a_unit_starts_when_its_inputs_are_done_not_its_stage(root):
    ex = HandDriven(root, auto={"tokenize", "extract"})
    runner = Runner(Ledger(root), ex)
    thread, out = _run_in_thread(runner, _plan())
    _wait_for(lambda: {"shuffle:res/layer_0", "shuffle:res/layer_1"} <= set(ex.running))
    ex.finish("shuffle:res/layer_0")
    # train of layer 0 is submitted while layer 1's shuffle still runs
    _wait_for(lambda: "train:res/layer_0" in ex.running)
    assert "shuffle:res/layer_1" in ex.running
    ex.auto.update({"shuffle", "train", "evaluate", "report"})
    for key in list(ex.running):
        ex.finish(key)
    thread.join(5)
    assert set(out["outcome"].values()) == {"complete"} and len(out["outcome"]) == 10
    assert ex.submitted.index("train:res/layer_0") < ex.submitted.index("train:res/layer_1")


def test_a_failure_blocks_only_what_depends_on_it(root):
    ex = HandDriven(root, auto={"tokenize", "extract", "shuffle", "train", "evaluate", "report"},
                    fail={"train:res/layer_1"})
    runner = Runner(Ledger(root), ex)
    outcome = runner.run(_plan())
    assert outcome["train:res/layer_1"] == "failed"
    assert outcome["evaluate:res/layer_1"] == outcome["report:suite"] == "blocked"
    assert outcome["evaluate:res/layer_0"] == "complete"
    assert runner.state.failed == {"train:res/layer_1"}
    assert "evaluate:res/layer_1" not in ex.submitted
    # a second run retries the failed unit and what it blocked, and skips the rest
    ex2 = HandDriven(root, auto={"train", "evaluate", "report"})
    again = Runner(Ledger(root), ex2).run(_plan())
    assert sorted(ex2.submitted) == ["evaluate:res/layer_1", "report:suite", "train:res/layer_1"]
    assert again["shuffle:res/layer_0"] == "skipped"


def test_waves_run_in_turn_and_are_freed(root):
    ex = HandDriven(root, auto={"tokenize", "extract", "shuffle", "train", "evaluate", "report"})
    runner = Runner(Ledger(root), ex, free_waves=True)
    runner.run(_plan(waves=2))
    sub = ex.submitted
    last_of_wave0 = max(sub.index(k) for k in sub if k.endswith("res/layer_0") or k.startswith("extract:wave_00"))
    assert min(sub.index(k) for k in sub if k.startswith("extract:wave_01")) > last_of_wave0
    ledger = Ledger(root)
    for w in (0, 1):
        for s in (0, 1):
            rec = ledger.get("extract", f"wave_{w:02d}/shard_{s:05d}")
            assert rec.freed_at is not None and not root.exists(rec.outputs[0])
    assert ledger.get("shuffle", "res/layer_0").freed_at is not None
    assert ledger.get("train", "res/layer_0").freed_at is None


def test_a_freed_input_is_restored_first_and_forces_nothing(root):
    plan = _plan(waves=2)
    first = HandDriven(root, auto={"tokenize", "extract", "shuffle", "train", "evaluate", "report"})
    Runner(Ledger(root), first, free_waves=True).run(plan)
    ex = HandDriven(root, auto={"tokenize", "extract", "shuffle", "train", "evaluate", "report"})
    runner = Runner(Ledger(root), ex, selectors=[Selector(stage="train", site="res", layer=0)], free_waves=True)
    outcome = runner.run(plan)
    restored = ["extract:wave_00/shard_00000", "extract:wave_00/shard_00001", "shuffle:res/layer_0"]
    assert ex.submitted[:3] == restored
    assert ex.submitted[3:] == ["train:res/layer_0", "evaluate:res/layer_0", "report:suite"]
    assert not set(restored) & runner.state.ran and outcome["train:res/layer_0"] == "complete"
    assert Ledger(root).get("extract", "wave_00/shard_00000").freed_at is not None  # freed again after the wave


def test_stop_cancels_running_units_and_records_them_interrupted(root):
    ex = HandDriven(root, auto={"tokenize", "extract"})
    runner = Runner(Ledger(root), ex)
    thread, out = _run_in_thread(runner, _plan())
    _wait_for(lambda: len(ex.running) == 2)
    runner.stop()
    thread.join(5)
    assert isinstance(out["error"], Interrupted)
    assert sorted(ex.cancelled) == ["shuffle:res/layer_0", "shuffle:res/layer_1"]
    ledger = Ledger(root)
    assert {ledger.get("shuffle", u).status for u in ("res/layer_0", "res/layer_1")} == {"interrupted"}
    assert runner.state.interrupted == {"shuffle:res/layer_0", "shuffle:res/layer_1"}
    # the next run re-runs them (an interrupted record is not complete) and what reads them
    ex2 = HandDriven(root, auto={"shuffle", "train", "evaluate", "report"})
    Runner(Ledger(root), ex2).run(_plan())
    assert ex2.submitted[:2] == ["shuffle:res/layer_0", "shuffle:res/layer_1"]
    assert ledger.get("shuffle", "res/layer_0").attempt == 2
