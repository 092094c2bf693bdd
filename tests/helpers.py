"""Plain helpers the tests import (`from tests.helpers import ...`); the fixtures live in conftest.py, which
pytest loads itself and no test imports."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import torch
import yaml

from flows.cli import main
from flows.config import SuiteConfig
from flows.prepare import prepare_suite
from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.lm.embedded import default_cache_dir
from tasks.plan import plan_suite
from tasks.registry import STAGE_NAMES
from tasks.runner import InProcessExecutor, Runner
from tasks.stages.tokenize import n_train_seqs

REPO = Path(__file__).resolve().parents[1]


#: the embedded instruction-tuned variant as a further evaluation model, on a few rows of its chats
IT_MODEL = {"name": "it", "model": {"name_or_path": "embedded:tiny-gemma2-it"}, "paths": ["embedded:tiny-chats"],
            "chat": True, "n_seqs": 8}


def small_suite_dict(root: Path, **overrides) -> dict:
    """A suite small enough to run end to end in well under a minute on 2 cores."""
    cfg = yaml.safe_load((REPO / "configs/tiny.yaml").read_text())
    cfg["name"] = "test"
    cfg["storage"]["root"] = str(root / "run")
    cfg["corpus"].update(max_train_seqs=96, n_eval_seqs=8)
    cfg["layers"] = [0, 2]
    cfg["extract"].update(seqs_per_shard=48, batch_size=16)
    cfg["shuffle"].update(bucket_rows=2048)
    cfg["sae"].update(widths=[64, 128], epochs_by_width={}, lambdas=[0.003, 0.03], batch_size=256, epochs=1,
                      log_every=10, lambda_warmup_steps=20, lr_warmup_steps=5)
    cfg["evaluate"].update(batch_size=8, models=[])  # a test that evaluates a further model says so (IT_MODEL)
    cfg["orchestration"]["prefect_home"] = str(root / "prefect")
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    return cfg


def seeded_prefect_home(home: Path) -> Path:
    """`home` with a Prefect database already migrated to this Prefect's schema, copied from one built once
    per Prefect version in the scopeflow cache: a server on a new database spends ~6 of the ~11 CPU-s of its
    start running every migration (BENCHMARKS.md, "What a cold process costs"); a test session starts two."""
    cache = default_cache_dir()
    template = cache / f"test-prefect-db-{metadata.version('prefect')}"
    if not (template / "prefect.db").exists():
        cache.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix="building-prefect-db-", dir=cache))
        subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], check=True,
                       capture_output=True, env={**os.environ, "PREFECT_HOME": str(building)})
        try:
            building.rename(template)
        except OSError:  # another process's build got there first: it serves as well
            shutil.rmtree(building, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template / "prefect.db", home / "prefect.db")
    return home


def ray_head_argv(port: int, temp_dir: Path, num_cpus: int, resources: dict[str, float] | None = None) -> list[str]:
    """`ray start` for a Ray instance the tests own: in the foreground (`--block`: terminating it stops all it
    started), on loopback, without a dashboard or a log monitor (every driver of the tests sets
    log_to_driver=False), with a small object store (units exchange paths, not arrays)."""
    argv = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address",
            "127.0.0.1", "--port", str(port), "--num-cpus", str(num_cpus), "--include-dashboard", "false",
            "--include-log-monitor", "false", "--object-store-memory", str(256 * 2**20), "--temp-dir",
            str(temp_dir), "--disable-usage-stats"]
    return argv + (["--resources", json.dumps(resources)] if resources else [])


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def api_post(api_url: str, path: str, body: dict) -> list[dict]:
    """The REST API behind the dashboard: what a person would see there."""
    return _api(urllib.request.Request(f"{api_url}{path}", data=json.dumps(body).encode(),
                                       headers={"Content-Type": "application/json"}))


def api_get(api_url: str, path: str) -> list[dict]:
    return _api(urllib.request.Request(f"{api_url}{path}"))


def _api(req: urllib.request.Request) -> list[dict]:
    with urllib.request.urlopen(req, timeout=60) as r:  # a loaded 2-core machine: seen over 10 s once
        return json.loads(r.read())


def suite_task_runs(api_url: str, config_path: str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """A suite's own flow runs on the session's shared server, whatever other tests run beside it: its
    `suite:{config}` runs, their `units` subflow runs, and those subflows' task runs (one per unit run)."""
    suites = api_post(api_url, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [f"suite:{config_path}"]}}})
    units = api_post(api_url, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [r["id"] for r in suites]}}})
    task_runs = api_post(api_url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [r["id"] for r in units]}},
                                                         "limit": 200}) if units else []
    return suites, units, task_runs


# Credentials the S3 tests put in the standard AWS environment; tests check they are written nowhere.
S3_KEY_ID, S3_SECRET = "AKIASCOPEFLOWTESTKEY", "scopeflow-test-secret-9f3c1d"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI's own code (`flows.cli.main`) in this process, on the `ray_session` fixture's warm Ray instance
    and the session's Prefect server: the path a user's command takes, without a new interpreter, Ray
    instance and cold workers per command (~15 s each here). Tests of signals and processes start
    `python -m flows.cli` (tests.faults.Cli, tests/test_cluster.py)."""
    saved = {k: os.environ.get(k) for k in ("COLUMNS", *(env or {}))}
    os.environ.update({"COLUMNS": "160", **(env or {})})
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse
                code = e.code if isinstance(e.code, int) else 2
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["scopeflow", *args], code, out.getvalue(), err.getvalue())


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


def sae_files(run: Path) -> dict[str, bytes]:
    """Every file under a local run's saes/, by relative path: what byte-identity checks compare."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "saes").rglob("*")) if p.is_file()}


def run_in_process(cfg_dict: dict) -> StorageRoot:
    """Every unit of the suite in this process, with one torch thread as in a Ray worker of one CPU (Ray sets
    OMP_NUM_THREADS to the unit's num_cpus): bit-for-bit equality holds for equal thread counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = SuiteConfig.model_validate(cfg_dict)
        prepared = prepare_suite(cfg, "local-reference")
        run_suite_in_process(cfg, prepared)
        return prepared.root
    finally:
        torch.set_num_threads(threads)


def root_files(root: StorageRoot) -> dict[str, bytes]:
    """Every file under a storage root (local or S3), by its path inside the root."""
    base = root.fs_path("")
    return {p[len(base) + 1:]: root.fs.cat_file(p) for p in root.fs.find(base)}


class ReferenceRun:
    """A clean run of a suite on one local node, in a process of its own started at once, so it runs while
    the scenario it is compared with does (much of which is waiting). One thread, as a Ray worker of one CPU:
    numpy's BLAS reads OMP_NUM_THREADS at import, so this cannot be the test's own process. At nice 10: the
    scenarios are the suite's critical path, and a reference is needed only once its scenario is done.

    With `folder`, the run is one of a test session, shared by the modules (and pytest-xdist workers) that
    compare with the same suite: the first to ask starts it (`shared_reference`), the others wait for the
    marker its process leaves in `folder`."""

    def __init__(self, cfg_dict: dict, folder: Path | None = None, start: bool = True) -> None:
        self.cfg, self._folder = cfg_dict, folder
        self._proc: subprocess.Popen | None = None
        if start:
            argv = [sys.executable, "-c", _REFERENCE_MAIN, json.dumps(cfg_dict), str(folder or "")]
            self._proc = subprocess.Popen(argv, cwd=REPO, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=lambda: os.nice(10))
        self._files: dict[str, bytes] | None = None

    def files(self) -> dict[str, bytes]:
        """Its files by path inside its root (waits for it)."""
        if self._files is None:
            if self._proc is not None:
                _, err = self._proc.communicate(timeout=600)
                assert self._proc.returncode == 0, err[-3000:]
            else:
                self._wait_for_marker(timeout=600)
            self._files = root_files(StorageRoot(self.cfg["storage"]["root"]))
        return self._files

    def _wait_for_marker(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (self._folder / _DONE).exists():
            if (failed := self._folder / _FAILED).exists():
                raise AssertionError(f"the shared reference run failed:\n{failed.read_text()[-3000:]}")
            assert time.monotonic() < deadline, f"the shared reference run {self._folder} did not end in {timeout} s"
            time.sleep(0.5)

    @property
    def root(self) -> StorageRoot:
        self.files()
        return StorageRoot(self.cfg["storage"]["root"])


_DONE, _FAILED = "reference-done", "reference-failed"
# The reference process: the run, then a marker in its folder (when shared) that other modules wait for.
_REFERENCE_MAIN = f"""
import json, sys, traceback
from pathlib import Path
from tests.helpers import run_in_process
folder = Path(sys.argv[2]) if sys.argv[2] else None
try:
    run_in_process(json.loads(sys.argv[1]))
except BaseException:
    if folder:
        (folder / "{_FAILED}").write_text(traceback.format_exc())
    raise
if folder:
    (folder / "{_DONE}").touch()
"""


def shared_reference(tmp_path_factory, name: str, make_cfg) -> ReferenceRun:
    """The session's reference run `name` of the suite `make_cfg(folder)`: started by the first module that
    asks (a folder created once is the claim), waited for by the others, on any xdist worker. The folder
    is in the session's temp dir, which xdist's workers share the parent of."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / f"shared-{name}"
    try:
        folder.mkdir()
    except FileExistsError:
        return ReferenceRun(make_cfg(folder), folder, start=False)
    return ReferenceRun(make_cfg(folder), folder)
