"""A train unit whose Ray worker is killed with SIGKILL mid-training is retried by Ray, resumes from its
last checkpoint, and ends with the SAEs an uninterrupted run trains, byte for byte (CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.ledger import Ledger
from storage.root import StorageRoot
from tests.helpers import REPO, cli, sae_files, small_suite_dict, write_config

pytestmark = pytest.mark.slow


def test_sigkilled_train_worker_resumes_from_its_checkpoint(tmp_path, prefect_server, ray_session, embedded_assets):
    # one (site, layer), SAEs wide enough that training lasts seconds, a checkpoint every 10 of ~95 steps: the
    # kill at the first checkpoint leaves 85 steps and an epoch boundary to resume through
    cfg = small_suite_dict(tmp_path, sites=["res"], layers=[0])
    cfg["sae"].update(widths=[1024, 2048], epochs=2, checkpoint_every=10)
    path = write_config(tmp_path / "suite.yaml", cfg)
    run = Path(cfg["storage"]["root"])
    proc = cli("run", str(path))  # the clean reference; the killed run below is a process of its own
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    clean = sae_files(run)
    assert any(k.endswith("params.npz") for k in clean) and not (run / "checkpoints/res/layer_0").exists()

    ledger = Ledger(StorageRoot(str(run)))
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "COLUMNS": "160"}
    rerun = subprocess.Popen([sys.executable, "-m", "flows.cli", "rerun", str(path), "--stage", "train"],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = run / "checkpoints/res/layer_0/state.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert rerun.poll() is None, "the rerun ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    record = ledger.get("train", "res/layer_0")
    assert record.status == "running" and record.attempt == 1 and record.pid
    os.kill(record.pid, signal.SIGKILL)  # the Ray worker running the unit: no exception, no cleanup
    killed_pid = record.pid

    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-3000:] + err[-3000:]
    record = ledger.get("train", "res/layer_0")
    assert record.status == "complete" and record.attempt == 2 and record.pid != killed_pid
    assert record.metrics["resumed_from_step"] >= 10  # Ray's retry picked up the checkpoint, not step 0
    assert not checkpoint.exists()  # removed once every SAE was written
    resumed = sae_files(run)
    assert resumed.keys() == clean.keys()
    assert [k for k in clean if resumed[k] != clean[k]] == []
    log = json.loads((run / "state/train/res/layer_0.json").read_text())
    assert log["status"] == "complete"
