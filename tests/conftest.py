"""Shared fixtures: the embedded assets (built once, cached like a user's run) and small suite configs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.plan import plan_suite
from tasks.registry import STAGE_NAMES
from tasks.runner import InProcessExecutor, Runner
from tasks.stages.tokenize import n_train_seqs

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded_assets():
    from tasks.lm.embedded import ensure_embedded_assets

    return ensure_embedded_assets()


def small_suite_dict(root: Path, **overrides) -> dict:
    """A suite small enough to run end to end in well under a minute on 2 cores."""
    cfg = yaml.safe_load((REPO / "configs/tiny.yaml").read_text())
    cfg["name"] = "test"
    cfg["storage"]["root"] = str(root / "run")
    cfg["corpus"].update(max_train_seqs=96, n_eval_seqs=8)
    cfg["layers"] = [0, 2]
    cfg["extract"].update(seqs_per_shard=48, batch_size=16)
    cfg["shuffle"].update(bucket_rows=2048)
    cfg["sae"].update(widths=[64, 128], lambdas=[0.003, 0.03], batch_size=256, epochs=2, log_every=10,
                      lambda_warmup_steps=20, lr_warmup_steps=5)
    cfg["evaluate"].update(batch_size=8)
    cfg["orchestration"]["prefect_home"] = str(root / "prefect")
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real Prefect server for the session (~10-20 s to start), as `scopeflow run` starts one."""
    from infra.prefect_server import start_server, stop_server

    proc, api_url = start_server(tmp_path_factory.mktemp("prefect-home"))
    yield api_url
    stop_server(proc)


def api_post(api_url: str, path: str, body: dict) -> list[dict]:
    """The REST API behind the dashboard: what a person would see there."""
    req = urllib.request.Request(f"{api_url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def scopeflow(api_url: str, *args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, against the session's Prefect server (`env`: more environment variables)."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "COLUMNS": "160", **(env or {})}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


# Credentials the S3 tests put in the standard AWS environment; tests check they are written nowhere.
S3_KEY_ID, S3_SECRET = "AKIASCOPEFLOWTESTKEY", "scopeflow-test-secret-9f3c1d"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's server, objects in memory) with one bucket, and the AWS
    environment variables pointing at nothing but it; both undone at the end of the session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID=S3_KEY_ID, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    url = f"http://127.0.0.1:{port}"
    try:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=url).mkdir("scopeflow-test")
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def end_times(root: StorageRoot) -> dict[str, str]:
    ledger = Ledger(root)
    return {f"{s}:{r.unit}": r.ended_at.isoformat() for s in STAGE_NAMES for r in ledger.records(s)}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in after if before.get(k) != after[k]}


def run_suite_in_process(cfg, prepared) -> dict:
    """Every unit of the suite's plan through the runner with the in-process executor: the flows' unit
    bookkeeping and scheduling without Prefect or Ray. Returns the plan."""
    runner = Runner(Ledger(prepared.root), InProcessExecutor(cfg, prepared.root))
    first = plan_suite(cfg, prepared.layers, prepared.model_name, None)
    runner.run(first)
    plan = plan_suite(cfg, prepared.layers, prepared.model_name, n_train_seqs(prepared.root))
    runner.run({k: v for k, v in plan.items() if k != STAGE_NAMES[0]}, all_units={s.key: s for s in first[STAGE_NAMES[0]]})
    assert not runner.state.failed, sorted(runner.state.failed)
    return plan
