"""Shared fixtures, started once per test session: the embedded assets (built once, cached like a user's
run), a Prefect server, and a real S3 endpoint. Plain helpers are in tests/helpers.py."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import s3fs
import torch
from moto import backends as moto_backends
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer

import ray

from infra.config import OrchestrationConfig
from infra.prefect_server import free_port, launch_server, stop_server, wait_healthy
from infra.processes import stop_process_group
from infra.ray_local import init_ray
from tasks.lm.embedded import ensure_embedded_assets
from tests.helpers import S3_KEY_ID, S3_SECRET, ray_head_argv, seeded_prefect_home

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray starts its workers at nice 15 (its raylet's `worker_niceness`), which here left every run on Ray starved
# by the CPU work at nice 0 beside it (reference runs, units run in a test's own process): seen in CI, a
# cluster run that takes 34 s alone got nothing done in 300 s. Every Ray instance the tests start inherits this.
os.environ.setdefault("RAY_worker_niceness", "0")
# A Ray node prestarts workers for its first driver in the default runtime environment, which no unit
# here uses (every run's workers carry its forwarded environment): seen, the shared instance of three CPUs
# started two such workers for the first pytest worker's run and kept them idle through the session.
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
# Ray's metrics (Prometheus, through every raylet's dashboard agent) and its event-loop statistics, which no
# test reads: off, the tests' instance (tests.helpers.ray_head_argv, no log monitor either) idle with a warm
# worker took 2.78 CPU-s a minute instead of 4.08-4.29 here; the session keeps several instances alive at once.
os.environ.setdefault("RAY_enable_metrics_collection", "0")
os.environ.setdefault("RAY_event_stats", "0")
# One Prefect server for the whole test session, every pytest-xdist worker's runs on it: the controller (or a
# run without xdist) fixes its address now and starts it (pytest_configure); the workers, which it starts
# later, inherit the address. Prefect reads its API URL once, when first imported (test modules import the
# flows at collection), so the address is fixed before any test module is imported.
if "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{free_port()}/api"
elif "PREFECT_API_URL" not in os.environ:
    raise RuntimeError("this pytest-xdist worker has no PREFECT_API_URL from its controller's tests/conftest.py")
from flows.ray_runner import ShapedRayTaskRunner  # noqa: E402  (imports Prefect: after its API URL is fixed)

_SERVER: dict = {}
# The Ray instance the controller starts for the workers' in-process runs (`ray_session`): its address.
_SHARED_RAY = "SCOPEFLOW_TEST_SHARED_RAY"
_RAY: dict = {}


def pytest_configure(config):
    if hasattr(config, "workerinput") or config.option.collectonly:
        return
    home = seeded_prefect_home(Path(tempfile.mkdtemp(prefix="sf-prefect-")))
    port = urlparse(os.environ["PREFECT_API_URL"]).port
    _SERVER.update(home=home, proc=launch_server(home, port)[0])  # healthy by the time a test asks for it
    workers = len(config.option.tx) if getattr(config.option, "dist", "no") != "no" else 0
    if workers:
        _start_shared_ray(workers)


def _start_shared_ray(workers: int) -> None:
    """One Ray instance for the in-process runs of all pytest-xdist workers (`ray_session`), each worker's
    units bounded to one at a time by a resource of its own: an instance costs ~12 CPU-s to start and ~4
    CPU-s a minute idle here (benchmarks/cold_start.py), and three of them lived through every session. `ray start --block` stops what it started when terminated; its address is fixed now, before the
    workers that inherit it start, and they wait for it to come up."""
    ray_port, tmp = free_port(), Path(tempfile.mkdtemp(prefix="sfr-", dir="/tmp"))
    argv = ray_head_argv(ray_port, tmp, workers, {_slot(f"gw{i}"): 1 for i in range(workers)})
    with open(tmp / "ray-start.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    os.environ[_SHARED_RAY] = f"127.0.0.1:{ray_port}"
    _RAY.update(proc=proc, tmp=tmp)


def _slot(worker: str) -> str:
    return f"pytest-{worker}"


def pytest_unconfigure(config):
    if _SERVER:
        stop_server(_SERVER["proc"])
        shutil.rmtree(_SERVER["home"], ignore_errors=True)
    if _RAY:
        stop_process_group(_RAY["proc"], timeout_s=30)
        shutil.rmtree(_RAY["tmp"], ignore_errors=True)


# The modules whose scenarios take longest, in the order they are handed out: `make test` runs the suite on
# three pytest-xdist workers, a module each at a time (--dist loadscope, so a module's fixtures run once, and
# --no-loadscope-reorder, so this order is kept). xdist gives each worker two modules at the start, the
# first three then the next three: a long module is paired with a short one, and the longest start first,
# as a long module started last would finish alone. Much of each scenario is waiting on processes, signals,
# a node's death or a 30 s outage, which is why more workers than cores pay.
_SLOWEST_FIRST = ("test_faults", "test_flow_integration", "test_cluster", "test_outage", "test_interrupts",
                  "test_stages", "test_bad_input", "test_waves", "test_capacity", "test_report_render",
                  "test_deployments")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))


@pytest.fixture(scope="session")
def embedded_assets():
    return ensure_embedded_assets()


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of small matmuls and of units run in this process (`pytestmark =
    pytest.mark.usefixtures("one_torch_thread")`): one thread, as a Ray worker of one CPU runs them; on a busy
    2-core machine OpenMP threads spinning against other processes made them 10-40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def prefect_server():
    """The session's one real Prefect server (pytest_configure started it), as `scopeflow run` starts one. It
    holds every test's runs: a test reads its own through its suite's flow run (tests.helpers.suite_task_runs)."""
    api_url = os.environ["PREFECT_API_URL"]
    wait_healthy(api_url, timeout=180, proc=_SERVER.get("proc"))
    return api_url


@pytest.fixture(scope="session")
def ray_session(prefect_server):
    """Ray for the in-process CLI runs (tests.helpers.cli): its workers stay warm (imports, the loaded model)
    from run to run, and report to the session's Prefect server. One unit at a time, so one worker per
    pytest worker: a second cost another cold worker's imports on a machine the three already keep busy.
    Under xdist, the session's shared instance (`_start_shared_ray`), with this worker's units held to one at
    a time by its own resource; otherwise (or for a worker xdist started anew) a local instance of one CPU."""
    ray.shutdown()
    address, slot = os.environ.get(_SHARED_RAY), _slot(os.environ.get("PYTEST_XDIST_WORKER", ""))
    patch = pytest.MonkeyPatch()
    if address and _join_shared_ray(address, slot):
        original = ShapedRayTaskRunner._remote
        patch.setattr(ShapedRayTaskRunner, "_remote",
                      lambda self, options: original(self, {**options, "resources": {slot: 1}}))
    else:
        init_ray(OrchestrationConfig(num_cpus=1))
    yield
    patch.undo()
    ray.shutdown()


def _join_shared_ray(address: str, slot: str, timeout: float = 180) -> bool:
    """Join the shared instance once it is up; False when it has no slot for this worker."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            init_ray(OrchestrationConfig(ray_address=address))
            break
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    if slot in ray.cluster_resources():
        return True
    ray.shutdown()
    return False


def _make_conditional_writes_atomic(patch: pytest.MonkeyPatch) -> None:
    """moto checks a PUT's or DELETE's If-None-Match / If-Match and then writes, with no lock between, on a
    thread per request: two create-only PUTs racing can both land (seen: two lease holders in
    tests/test_lease.py's race under load). S3 decides a conditional write atomically; so does this, one at a
    time, as the root lease relies on."""
    lock = threading.Lock()
    for name in ("put_object", "delete_object"):
        original = getattr(S3Response, name)

        def one_at_a_time(self, _original=original):
            if self.headers.get("If-None-Match") or self.headers.get("If-Match"):
                with lock:
                    return _original(self)
            return _original(self)

        patch.setattr(S3Response, name, one_at_a_time)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's server, objects in memory) with one bucket, and the AWS
    environment variables pointing at nothing but it; both undone at the end of the session."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    # moto lists its own package folder (~170 stat calls) on every request to find the service: several
    # CPU-s of this process per session for a listing that does not change while it runs
    listing = tuple(moto_backends.list_of_moto_modules())
    patch = pytest.MonkeyPatch()
    patch.setattr(moto_backends, "list_of_moto_modules", lambda: listing)
    _make_conditional_writes_atomic(patch)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID=S3_KEY_ID, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    url = f"http://127.0.0.1:{port}"
    try:
        s3fs.S3FileSystem(endpoint_url=url).mkdir("scopeflow-test")
        yield url
    finally:
        server.stop()
        patch.undo()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
