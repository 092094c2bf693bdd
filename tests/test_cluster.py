"""The suite on a multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head with no CPUs for
units, worker nodes each with its own cache, Hugging Face home and temp dir), its root on the tests' S3
endpoint, run once through the CLI as a user runs it, a node removed without grace while an extract unit runs
on it and another while a train unit does: each unit is retried on another node, and the run still has the
bytes of one local node, its units on several nodes, nothing read from the driver's disk. The same run shows
the S3 side: every file as on local disk, the credentials (from the AWS environment) written nowhere.

To remove a node "while a unit runs on it" without racing a unit that lasts a fraction of a second here, a
gate in the S3 endpoint (moto's server runs in this process) holds a chosen PUT of that unit: the node is
removed while the unit waits on it, and the held PUT is dropped once the unit's worker is gone."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import s3fs
from moto.s3.models import S3Backend

import ray
from ray.cluster_utils import Cluster

from flows.config import ConfigError, load_suite_config
from infra.config import OrchestrationConfig
from infra.ray_local import init_ray
from flows.prepare import prepare_suite
from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.lm.embedded import EMBEDDED_VERSION, ensure_embedded_assets, publish_embedded_assets
from tasks.registry import STAGE_NAMES
from tests.helpers import (REPO, S3_KEY_ID, S3_SECRET, ReferenceRun, api_post, root_files, small_suite_dict,
                           suite_task_runs, write_config)

pytestmark = pytest.mark.slow

BUCKET_ROOT = "scopeflow-test/cluster/run"
ASSETS = f"embedded-v{EMBEDDED_VERSION}"
# What names its own location or time (compared by content elsewhere), and what a run removes when done.
_NOT_COMPARED = ("state/", "suite.json", "report/", "checkpoints/")
# Node death noticed in ~2 s rather than Ray's default ~15 s (a test setting, not scopeflow's).
_FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                       "health_check_failure_threshold": 3}


def _suite(tmp: Path, root: str, endpoint: str | None, ray_address: str | None) -> dict:
    # one (site, layer): what is distributed is units on nodes, the same for every site, and each further site
    # is four more units in the cluster's run and in the reference (~30 CPU-s of the session here)
    cfg = small_suite_dict(tmp, sites=["res"], layers=[1])
    cfg["storage"]["root"] = root
    cfg["sae"]["checkpoint_every"] = 5  # a runtime field: not in any fingerprint
    if endpoint:
        cfg["storage"]["storage_options"] = {"endpoint_url": endpoint}
    if ray_address:
        cfg["orchestration"]["ray_address"] = ray_address
    return cfg


class _Hold:
    """One PUT to hold: the `skip+1`-th whose bucket/key matches `pattern`."""

    def __init__(self, pattern: str, skip: int) -> None:
        self.pattern, self.skip = re.compile(pattern), skip
        self.hit, self.released = threading.Event(), threading.Event()


class _PutGate:
    """Holds chosen PUTs in moto's server until released, then fails them (their client is dead by then): the
    unit that sent one is held mid-run, its ledger record `running`. Each hold fires once, so a retry's PUT
    goes through."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds: list[_Hold] = []

    def arm(self, pattern: str, skip: int = 0) -> _Hold:
        hold = _Hold(pattern, skip)
        with self._lock:
            self._holds.append(hold)
        return hold

    def release_all(self) -> None:
        with self._lock:
            holds, self._holds = self._holds, []
        for h in holds:
            h.released.set()

    def held(self, key: str) -> bool:
        """`key`: bucket/key."""
        with self._lock:
            hold = next((h for h in self._holds if h.pattern.search(key)), None)
            if hold is None:
                return False
            if hold.skip:
                hold.skip -= 1
                return False
            self._holds.remove(hold)
        hold.hit.set()
        hold.released.wait(120)
        return True


@pytest.fixture(scope="module")
def put_gate():
    gate = _PutGate()
    original = S3Backend.put_object

    def put_object(self, bucket_name, key_name, value, *args, **kwargs):
        if gate.held(f"{bucket_name}/{key_name}"):
            raise ConnectionAbortedError(f"test gate: the node that sent PUT {key_name} was removed")
        return original(self, bucket_name, key_name, value, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S3Backend, "put_object", put_object)
        yield gate
        gate.release_all()


class _LocalCluster:
    """A head that runs no unit (num_cpus=0) and worker nodes of one CPU, each with its own SCOPEFLOW_CACHE,
    HF_HOME and TMPDIR through the node's environment (its raylet's, which its workers inherit); no log
    monitors, as the drivers read no worker output (log_to_driver=False)."""

    def __init__(self, base: Path) -> None:
        self.base, self.node_dirs, self._n = base, {}, 0
        (base / "ray").mkdir()
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": str(base / "ray"), "include_dashboard": False, "include_log_monitor": False,
            "_system_config": _FAST_HEALTH_CHECKS})

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    def add_node(self, wait: bool = True):
        home = self.base / f"node{self._n}"
        self._n += 1
        env = {"SCOPEFLOW_CACHE": str(home / "cache"), "HF_HOME": str(home / "hf"), "TMPDIR": str(home / "tmp")}
        for d in env.values():
            Path(d).mkdir(parents=True)
        node = self.cluster.add_node(wait=wait, num_cpus=1, env_vars=env, include_log_monitor=False)
        self.node_dirs[node.node_id] = home
        return node

    def node(self, node_id: str):
        return next(n for n in self.cluster.worker_nodes if n.node_id == node_id)

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    # short: Ray's socket paths live under it; and Ray's address file goes here, not into /tmp/ray
    base = Path(tempfile.mkdtemp(prefix="sfk-", dir="/tmp"))
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(base)
    on_sigterm = signal.getsignal(signal.SIGTERM)  # Ray's nodes install their own in this process
    c = _LocalCluster(base)
    try:
        c.add_node(wait=False)
        c.add_node(wait=False)
        c.cluster.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
        signal.signal(signal.SIGTERM, on_sigterm)
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded_assets):
    """The same suite on one local node, run while the cluster's run does."""
    tmp = tmp_path_factory.mktemp("one-node")
    ref = ReferenceRun(_suite(tmp, str(tmp / "local"), None, None))
    yield ref
    ref.files()  # never left running


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, cluster, s3_endpoint, prefect_server, embedded_assets, put_gate, reference):
    """The suite's run on the cluster, through the CLI, in which a node is removed without grace while extract
    shard 0 runs on it (and replaced, as an autoscaler would), and another while train res/layer_1 runs on it
    after its first checkpoint (its second checkpoint is held); one node finishes the run. One run for both
    deaths and for what a cluster run must show anyway (the bytes of one node, units on several nodes, each
    node's own cache, no credentials anywhere): a run and its rerun cost ~40 CPU-s more here, most of it a
    cold driver and a new job's cold workers on every node."""
    tmp = tmp_path_factory.mktemp("cluster")
    driver_cache = tmp / "driver-cache"  # the driver's own cache: a copy of the session's build
    shutil.copytree(embedded_assets.model_dir.parent, driver_cache / ASSETS)
    before = _tree(driver_cache)
    path = write_config(tmp / "suite.yaml", _suite(tmp, f"s3://{BUCKET_ROOT}", s3_endpoint, cluster.address))
    env = {"SCOPEFLOW_CACHE": str(driver_cache)}
    root = StorageRoot(f"s3://{BUCKET_ROOT}", {"endpoint_url": s3_endpoint})
    ledger = Ledger(root)
    extract = put_gate.arm(rf"^{re.escape(BUCKET_ROOT)}/activations/res/layer_1/shard_00000/")
    train = put_gate.arm(rf"^{re.escape(BUCKET_ROOT)}/checkpoints/res/layer_1/state\.pt$", skip=1)
    t0 = time.monotonic()
    proc = _start(prefect_server, env, "run", str(path))
    try:
        killed = {"extract": _kill_node_at(extract, cluster, proc, ledger, "extract", "shard_00000", replace=True),
                  "train": _kill_node_at(train, cluster, proc, ledger, "train", "res/layer_1", replace=False)}
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    nodes = {f"{s}:{r.unit}": r.node[:8] for s in STAGE_NAMES for r in ledger.records(s)}
    print(f"\ncluster run: {time.monotonic() - t0:.1f} s through the CLI; units per node "
          f"{ {n: list(nodes.values()).count(n) for n in sorted(set(nodes.values()))} }")
    for stage, unit in (("extract", "shard_00000"), ("train", "res/layer_1")):
        rec = ledger.get(stage, unit)
        print(f"node death in {stage}:{unit}: killed node {killed[stage][0][:8]}, completed on {rec.node[:8]} "
              f"at attempt {rec.attempt}" + (f", resumed from step {rec.metrics['resumed_from_step']}"
                                              if stage == "train" else ""))
    return {"path": path, "proc": subprocess.CompletedProcess(proc.args, proc.returncode, out, err), "root": root,
            "files": root_files(root), "ledger": ledger, "killed": killed, "driver_cache": driver_cache,
            "driver_before": before}


def _outputs(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.startswith(_NOT_COMPARED)}


def _fingerprints(root: StorageRoot) -> dict[str, str]:
    ledger = Ledger(root)
    return {f"{s}:{r.unit}": r.fingerprint for s in STAGE_NAMES for r in ledger.records(s)}


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_same_as_one_node(run: dict, reference: ReferenceRun) -> None:
    want, want_fps = _outputs(reference.files()), _fingerprints(reference.root)
    got = _outputs(run["files"])
    assert sorted(got) == sorted(want)
    assert [k for k in sorted(want) if got[k] != want[k]] == []
    assert any(k.startswith("saes/") and k.endswith("params.npz") for k in got) and "evals/res/layer_1.parquet" in got
    assert _fingerprints(run["root"]) == want_fps
    assert not [k for k in run["files"] if k.startswith("checkpoints/")]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_node_at(hold: _Hold, cluster: _LocalCluster, proc: subprocess.Popen, ledger: Ledger,
                  stage: str, unit: str, replace: bool) -> tuple[str, int]:
    """Once the unit is held: remove its node without grace, add a replacement node (its own environment) if
    `replace`, wait until the unit's worker is dead, then drop the held PUT. Returns (node id, pid) of the
    dead one."""
    deadline = time.monotonic() + 240
    while not hold.hit.wait(0.2):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended before {stage}:{unit} reached the gate:\n{out[-2000:]}{err[-2000:]}")
        assert time.monotonic() < deadline, f"{stage}:{unit} never reached the gate"
    rec = ledger.get(stage, unit)
    assert rec.status == "running" and rec.node and rec.node != cluster.head_id and rec.pid, rec
    cluster.cluster.remove_node(cluster.node(rec.node), allow_graceful=False)
    if replace:
        cluster.add_node(wait=False)  # joins while the unit is retried on the node that is left
    deadline = time.monotonic() + 60
    while not _gone(rec.pid):
        assert time.monotonic() < deadline, f"the worker {rec.pid} outlived its node"
        time.sleep(0.1)
    hold.released.set()
    return rec.node, rec.pid


def _start(api_url: str, env: dict, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api_url, "COLUMNS": "160", **env}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_cluster_run_is_byte_identical_to_one_local_node(cluster_run, cluster, reference):
    proc, ledger = cluster_run["proc"], cluster_run["ledger"]
    assert "ran 8 unit(s)" in proc.stdout  # tokenize, 2 extract, shuffle, train, evaluate, inspect, report
    _assert_same_as_one_node(cluster_run, reference)
    nodes = {f"{s}:{r.unit}": r.node for s in STAGE_NAMES for r in ledger.records(s)}
    assert all(nodes.values()), nodes  # every record names the Ray node it ran on
    assert set(nodes.values()) <= set(cluster.node_dirs) and cluster.head_id not in nodes.values()
    assert len(set(nodes.values())) >= 2, nodes



def test_every_file_of_the_run_is_on_s3_as_on_local_disk(cluster_run, reference):
    """All of the root, not only the compared outputs: the same files (the ledger, suite.json and the report
    name their location or time, and are compared by content in other tests)."""
    got, want = cluster_run["files"], reference.files()
    assert {"suite.json", "report/index.html", "evals/res/layer_1.parquet", "state/train/res/layer_1.json"} <= set(got)
    assert sorted(got) == sorted(want)
    assert any(k.startswith("shuffled/") for k in got) and any(k.endswith("params.npz") for k in got)


def test_credentials_are_written_nowhere(cluster_run, cluster, s3_endpoint, prefect_server):
    """The S3 credentials come from the standard AWS environment of the driver and of every node, and appear
    in no object of the bucket, no line of the CLI, no Ray log of any node, nothing the dashboard shows."""
    proc, secrets = cluster_run["proc"], (S3_KEY_ID, S3_SECRET)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    objects = fs.find("scopeflow-test")
    assert objects and not [p for p in objects if any(s.encode() in fs.cat_file(p) for s in secrets)]
    assert not any(s in proc.stdout + proc.stderr for s in secrets)
    # the cluster's session folder: the driver's, every raylet's and every worker's logs
    ray_files = [p for p in (cluster.base / "ray").rglob("*") if p.is_file()]  # sockets are not files
    assert any(p.name.startswith("worker-") for p in ray_files), sorted(p.name for p in ray_files)[:20]
    assert not [p for p in ray_files if any(s.encode() in p.read_bytes() for s in secrets)]
    # this run's flow and task runs and their logs, on the session's server that every test's runs share
    suites, units, task_runs = suite_task_runs(prefect_server, cluster_run["path"])
    flow_ids = [r["id"] for r in suites + units]
    logs = api_post(prefect_server, "/logs/filter", {"logs": {"flow_run_id": {"any_": flow_ids}}, "limit": 200})
    for name, seen in (("flow runs", suites + units), ("task runs", task_runs), ("logs", logs)):
        assert len(str(seen)) > 100 and not any(s in str(seen) for s in secrets), name
    assert f"s3://{BUCKET_ROOT}" in str(suites + units)


def test_credentials_in_the_config_are_refused(tmp_path):
    cfg = _suite(tmp_path, "s3://b/p", "http://127.0.0.1:1", None)
    cfg["storage"]["storage_options"]["secret"] = "x"
    path = write_config(tmp_path / "bad.yaml", cfg)
    with pytest.raises(ConfigError, match=r"storage\.storage_options: .*secret: credentials are not read from the "
                                          r"config; set AWS_ACCESS_KEY_ID"):
        load_suite_config(path)

def _assert_nodes_use_their_own_caches(cluster_run, cluster: _LocalCluster) -> None:
    """Every node that ran a stage reading the corpus, the tokenizer or the model holds a cache of its own: a
    copy of the driver's build (fetched from the root), not a build of its own (even the manifest's build
    timings agree); and the driver's cache is untouched."""
    root, driver = cluster_run["root"], cluster_run["driver_cache"] / ASSETS
    want = _tree_bytes(driver)
    ran_on = {r.node for s in ("tokenize", "extract", "evaluate") for r in Ledger(root).records(s)}
    for node_id in ran_on:
        own = cluster.node_dirs[node_id] / "cache" / ASSETS
        assert (own / "COMPLETE").is_file(), f"node {node_id[:8]} has no cache of its own"
        assert _tree_bytes(own) == want
    assert _tree(cluster_run["driver_cache"]) == cluster_run["driver_before"]


def test_units_read_the_embedded_assets_from_their_nodes_own_caches(cluster_run, cluster):
    root = cluster_run["root"]
    published = f"assets/{ASSETS}"
    assert root.exists(f"{published}/files.json") and root.exists(f"{published}/model/model.safetensors")
    _assert_nodes_use_their_own_caches(cluster_run, cluster)


def test_published_assets_are_copied_checked_and_never_replaced(tmp_path, embedded_assets):
    root = StorageRoot(str(tmp_path / "root"))
    assert publish_embedded_assets(root) == "published"  # this machine's build (the session's cache)
    assert publish_embedded_assets(root) == "present"
    built = embedded_assets.model_dir.parent
    fetched = ensure_embedded_assets(tmp_path / "node", source=root).model_dir.parent
    assert fetched == tmp_path / "node" / ASSETS
    assert _tree_bytes(fetched) == _tree_bytes(built)
    root.write_bytes(f"assets/{ASSETS}/model/model.safetensors", b"not the weights")
    with pytest.raises(OSError, match=r"model\.safetensors does not match its sha256 in files\.json; delete "):
        ensure_embedded_assets(tmp_path / "other", source=root)
    assert not (tmp_path / "other" / ASSETS).exists()  # nothing half-copied under the final name
    index = root.read_json(f"assets/{ASSETS}/files.json")
    root.write_json(f"assets/{ASSETS}/files.json", {**index, "corpus.jsonl": "0" * 64})
    assert publish_embedded_assets(root) == "kept"  # another build: the root's outputs were computed from it
    assert root.read_json(f"assets/{ASSETS}/files.json")["corpus.jsonl"] == "0" * 64


def test_the_drivers_cache_folder_is_forwarded_to_a_local_instance_only(monkeypatch):
    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(kw["runtime_env"]["env_vars"]))
    monkeypatch.setenv("SCOPEFLOW_CACHE", "/driver/cache")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    init_ray(OrchestrationConfig(ray_address="10.0.0.1:6379"))
    init_ray(OrchestrationConfig())
    cluster_env, local_env = seen
    assert "SCOPEFLOW_CACHE" not in cluster_env and local_env["SCOPEFLOW_CACHE"] == "/driver/cache"
    assert cluster_env["PREFECT_API_URL"] == local_env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"


def test_a_local_model_folder_must_exist_and_is_checked_at_prepare(tmp_path):
    # on the driver, before Ray is joined or anything written (the CLI prints this line: tests/test_bad_input.py)
    cfg = _suite(tmp_path, str(tmp_path / "run"), None, "127.0.0.1:6379")
    cfg["model"]["name_or_path"] = str(tmp_path / "no-such-model")
    path = write_config(tmp_path / "suite.yaml", cfg)
    with pytest.raises(ConfigError) as e:
        prepare_suite(load_suite_config(path), str(path), write=False, need_write=True)
    assert str(e.value) == (f"{path}: model.name_or_path: model folder does not exist: {tmp_path}/no-such-model "
                            f"(a model given as a local folder must exist at this path on every Ray node)")
    assert not (tmp_path / "run").exists()
    assert "must exist on every node" in (REPO / "docs/architecture.md").read_text()
    assert "must exist on every node" in (REPO / "README.md").read_text()


def test_a_node_removed_while_an_extract_unit_runs(cluster_run, cluster, reference):
    ledger, (node, pid) = cluster_run["ledger"], cluster_run["killed"]["extract"]
    rec = ledger.get("extract", "shard_00000")
    assert rec.status == "complete" and rec.attempt >= 2 and rec.node not in ("", node) and rec.pid != pid
    _assert_same_as_one_node(cluster_run, reference)
    _assert_nodes_use_their_own_caches(cluster_run, cluster)  # a replacement node too, if it ran one


def test_a_node_removed_while_a_train_unit_runs(cluster_run, reference):
    ledger, (node, pid) = cluster_run["ledger"], cluster_run["killed"]["train"]
    rec = ledger.get("train", "res/layer_1")
    assert rec.status == "complete" and rec.attempt >= 2 and rec.node not in ("", node) and rec.pid != pid
    assert rec.metrics["resumed_from_step"] >= 5  # from its checkpoint on the root, not from step 0
    _assert_same_as_one_node(cluster_run, reference)
