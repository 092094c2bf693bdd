"""The tiny suite with its storage root on S3: a real S3 HTTP endpoint (moto's server on 127.0.0.1, started
and stopped by a fixture), the real flow through Prefect and Ray, the same bytes as on local disk, and the
credentials (from the standard AWS environment) written nowhere."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import s3fs
import torch

from flows.config import SuiteConfig
from flows.prepare import prepare_suite
from storage.root import StorageRoot
from tests.helpers import S3_KEY_ID, S3_SECRET, api_post, run_suite_in_process, scopeflow, small_suite_dict, write_config

pytestmark = pytest.mark.slow

BUCKET_ROOT = "scopeflow-test/runs/tiny"
# Outputs that name their own location or time (the ledger, suite.json, the HTML report) are compared by
# content elsewhere; every array, SAE file and evaluation must be byte-identical.
_LOCATION_DEPENDENT = ("state/", "suite.json", "report/")


def _suite(tmp: Path, root: str, endpoint: str | None) -> dict:
    cfg = small_suite_dict(tmp, sites=["res", "mlp"], layers=[1])
    cfg["storage"]["root"] = root
    if endpoint:
        cfg["storage"]["storage_options"] = {"endpoint_url": endpoint}
    return cfg


def _run_in_process(cfg_dict: dict) -> StorageRoot:
    """Every unit in this process, with one torch thread as in a Ray worker (Ray sets OMP_NUM_THREADS to the
    unit's num_cpus): bit-for-bit equality holds for equal thread counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_units(cfg_dict)
    finally:
        torch.set_num_threads(threads)


def _run_units(cfg_dict: dict) -> StorageRoot:
    cfg = SuiteConfig.model_validate(cfg_dict)
    prepared = prepare_suite(cfg, "local-reference")
    run_suite_in_process(cfg, prepared)
    return prepared.root


def _files(root: StorageRoot) -> dict[str, bytes]:
    base = root.fs_path("")
    return {p[len(base) + 1:]: root.fs.cat_file(p) for p in root.fs.find(base)}


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory, s3_endpoint, prefect_server, embedded_assets):
    tmp = tmp_path_factory.mktemp("s3")
    path = write_config(tmp / "suite.yaml", _suite(tmp, f"s3://{BUCKET_ROOT}", s3_endpoint))
    ray_tmp = Path(tempfile.mkdtemp(prefix="sf-ray-"))  # short: Ray's socket paths live under it
    proc = scopeflow(prefect_server, "run", str(path), env={"RAY_TMPDIR": str(ray_tmp)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield tmp, path, proc, ray_tmp
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_every_stage_writes_to_s3_the_same_bytes_as_local_disk(s3_run, s3_endpoint):
    tmp, _, proc, _ = s3_run
    assert "ran 10 unit(s)" in proc.stdout  # tokenize, 2 extract, 2 x (shuffle, train, evaluate), report
    remote = StorageRoot(f"s3://{BUCKET_ROOT}", {"endpoint_url": s3_endpoint})
    local = _run_in_process(_suite(tmp, str(tmp / "local"), None))
    got, want = _files(remote), _files(local)
    assert {"suite.json", "report/index.html", "evals/res/layer_1.parquet", "state/train/mlp/layer_1.json"} <= set(got)
    assert not [k for k in got if k.startswith("checkpoints/")]  # removed once the SAEs were written
    compared = {k for k in want if not k.startswith(_LOCATION_DEPENDENT)}
    assert set(got) - set(want) == set() and set(want) - set(got) == set()
    differing = [k for k in sorted(compared) if got[k] != want[k]]
    assert differing == [], [(k, got[k][:600], want[k][:600]) for k in differing[:2]]
    assert any(k.startswith("shuffled/") for k in compared) and any(k.endswith("params.npz") for k in compared)


def test_credentials_are_written_nowhere(s3_run, s3_endpoint, prefect_server):
    _, _, proc, ray_tmp = s3_run
    secrets = (S3_KEY_ID, S3_SECRET)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    objects = fs.find("scopeflow-test")
    assert objects and not [p for p in objects if any(s.encode() in fs.cat_file(p) for s in secrets)]
    assert not any(s in proc.stdout + proc.stderr for s in secrets)
    # Ray's session folder: the driver's, raylet's and every worker's logs
    ray_files = [p for p in ray_tmp.rglob("*") if p.is_file()]  # sockets are not files
    assert any(p.name.startswith("worker-") for p in ray_files), sorted(p.name for p in ray_files)[:20]
    assert not [p for p in ray_files if any(s.encode() in p.read_bytes() for s in secrets)]
    # what the dashboard shows: flow runs (with their parameters), task runs, logs
    for path in ("/flow_runs/filter", "/task_runs/filter", "/logs/filter"):
        seen = str(api_post(prefect_server, path, {"limit": 200}))
        assert len(seen) > 100 and not any(s in seen for s in secrets), path
    assert f"s3://{BUCKET_ROOT}" in str(api_post(prefect_server, "/flow_runs/filter", {"limit": 200}))


def test_credentials_in_the_config_are_refused(tmp_path):
    cfg = _suite(tmp_path, "s3://b/p", "http://127.0.0.1:1")
    cfg["storage"]["storage_options"]["secret"] = "x"
    path = write_config(tmp_path / "bad.yaml", cfg)
    from flows.config import ConfigError, load_suite_config

    with pytest.raises(ConfigError, match=r"storage\.storage_options: .*secret: credentials are not read from the "
                                          r"config; set AWS_ACCESS_KEY_ID"):
        load_suite_config(path)
