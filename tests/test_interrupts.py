"""A run interrupted with SIGINT while it trains, and a Ray worker SIGKILLed while it trains, each on a root
of its own: the run stops within 10 s with its units recorded interrupted, the worker's unit is retried and
resumes from its checkpoint, and both runs end with the bytes of one clean reference run."""
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
from tests.faults import (Cli, assert_same_outputs, assert_stopped_by_signal, clean_reference, fault_suite, lease_run,
                          processes, statuses, training, until)
from tests.helpers import ReferenceRun, cli, root_files, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded_assets) -> ReferenceRun:
    yield from clean_reference(tmp_path_factory)


@pytest.fixture(scope="module")
def sigint_run(tmp_path_factory, prefect_server, ray_session, embedded_assets):
    """D (`scopeflow run`, a process of its own) gets SIGINT while its train unit runs; E (the CLI's code in
    this process, on the session's warm Ray) resumes it."""
    tmp = tmp_path_factory.mktemp("sigint")
    cfg = fault_suite(tmp, str(tmp / "run"))
    path = str(write_config(tmp / "suite.yaml", cfg))
    root = StorageRoot(cfg["storage"]["root"])
    f: dict = {"root": root}
    d = Cli(tmp, "d", "run", path, api_url=prefect_server)
    try:
        f["d_run"] = until("D's lease", lambda: lease_run(root), d)
        f["d_running"] = until("D's train unit running", lambda: training(root, f["d_run"]), d)
        f["d_procs"] = processes(d.ray_tmp)
        f["d_rc"], f["d_exit_s"] = d.signal(signal.SIGINT)
        f["d_left"] = processes(d.ray_tmp)
        f["after_d"], f["d_err"] = statuses(root), d.stderr
    finally:
        d.close()
    f["e"] = cli("run", path)
    print(f"\nD exited {f['d_exit_s']:.2f} s after SIGINT (rc {f['d_rc']})")
    return f


def test_sigint_stops_the_run_within_10_s_recording_its_units_interrupted(sigint_run):
    assert_stopped_by_signal(sigint_run, "d")


def test_the_run_resumed_after_sigint_has_the_bytes_of_a_clean_run(sigint_run, reference):
    e = sigint_run["e"]
    assert e.returncode == 0, e.stdout[-2000:] + e.stderr[-3000:]
    assert "notice:" not in e.stderr  # D released the lease
    got = root_files(sigint_run["root"])
    assert not [k for k in got if k.startswith("checkpoints/") or "lease" in k], sorted(got)[:20]
    assert_same_outputs(got, reference)


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
