"""prefect.yaml deploys, and its cron deployment really gets scheduled runs (sqlalchemy 2.1 silently broke
this with prefect 3.8.8: docs/architecture.md, "Pitfalls of this stack")."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, api_post

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).parent / "prefect")


def test_prefect_yaml_declares_the_deployments():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    assert deps["full-suite"]["entrypoint"] == "flows/suite.py:suite_flow"
    assert deps["full-suite"]["schedules"][0]["cron"]
    assert deps["rerun"]["entrypoint"] == "flows/suite.py:rerun_flow"
    assert {d["work_pool"]["name"] for d in deps.values()} == {"scopeflow-process"}


def test_cron_deployment_schedules_runs(prefect_server):
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "SCOPEFLOW_PROJECT_DIR": str(REPO)}
    pool = subprocess.run([PREFECT, "work-pool", "create", "scopeflow-process", "--type", "process"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    names = {d["name"]: d for d in api_post(prefect_server, "/deployments/filter", {})}
    assert {"full-suite", "rerun"} <= set(names)
    assert names["full-suite"]["schedules"][0]["schedule"]["cron"] == "0 3 * * 0"
    scheduled = []
    for _ in range(30):
        scheduled = api_post(prefect_server, "/flow_runs/filter", {
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            "deployments": {"id": {"any_": [names["full-suite"]["id"]]}}})
        if scheduled:
            break
        time.sleep(2)
    assert scheduled, "the cron deployment got no scheduled runs"
    assert all(r["expected_start_time"].endswith("03:00:00Z") for r in scheduled)
