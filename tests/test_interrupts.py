"""A Ray worker SIGKILLed while it trains: the worker's unit is retried and resumes from its checkpoint, and
the run ends with the bytes of one clean reference run. (Signals sent to the CLI, SIGINT among them, are
tests/test_faults.py's chain of runs on one root.)"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from storage import layout
from storage.ledger import Ledger
from storage.root import StorageRoot
from tests.faults import assert_same_outputs, clean_reference, fault_suite
from tests.helpers import ReferenceRun, cli, root_files, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded_assets) -> ReferenceRun:
    yield from clean_reference(tmp_path_factory)


@pytest.fixture(scope="module")
def worker_killed(tmp_path_factory, ray_session, embedded_assets):
    """`scopeflow run` (the CLI's code in this process, on the session's warm Ray) while a watcher SIGKILLs the
    Ray worker running the train unit once it has written its first checkpoint: no exception, no cleanup."""
    tmp = tmp_path_factory.mktemp("worker-kill")
    cfg = fault_suite(tmp, str(tmp / "run"))
    path = write_config(tmp / "suite.yaml", cfg)
    root = StorageRoot(cfg["storage"]["root"])
    ledger, checkpoint = Ledger(root), Path(root.fs_path(layout.checkpoint("res", 0)))
    killed: dict = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if checkpoint.exists() and (rec := ledger.get("train", "res/layer_0")).status == "running" and rec.pid:
                killed.update(pid=rec.pid, attempt=rec.attempt)
                os.kill(rec.pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        proc = cli("run", str(path))
    finally:
        stop.set()
        watcher.join()
    return proc, root, killed, checkpoint


def test_a_sigkilled_train_worker_is_retried_and_resumes_from_its_checkpoint(worker_killed, reference):
    proc, root, killed, checkpoint = worker_killed
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert killed and killed["attempt"] == 1, "the train unit was never seen running after a checkpoint"
    record = Ledger(root).get("train", "res/layer_0")
    assert record.status == "complete" and record.attempt == 2 and record.pid != killed["pid"]
    assert record.metrics["resumed_from_step"] >= 10  # Ray's retry picked up the checkpoint, not step 0
    assert not checkpoint.exists()  # removed once every SAE was written
    assert json.loads(Path(root.fs_path("state/train/res/layer_0.json")).read_text())["status"] == "complete"
    assert_same_outputs(root_files(root), reference)
