"""Plain helpers of the fault tests (tests/test_outage.py, tests/test_faults.py): their suite, the CLI as a
background process, and what they read of a run while it runs and after."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import zarr

from storage.lease import current as current_lease
from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.registry import STAGE_NAMES
from tests.helpers import REPO, ReferenceRun, seeded_prefect_home, shared_reference, small_suite_dict

EXIT_LIMIT_S = 10.0
# Outputs that name their own location or time (the ledger, suite.json, the HTML report) are compared by
# content elsewhere; every array, SAE file and evaluation must be byte-identical.
LOCATION_DEPENDENT = ("state/", "suite.json", "report/")


def fault_suite(tmp: Path, root: str, endpoint: str | None = None, **orchestration) -> dict:
    """One site, one layer, SAEs wide enough that the train unit lasts ~5 s, so a signal lands while it runs,
    with a checkpoint every 10 steps, so an interrupted unit has one to resume from."""
    cfg = small_suite_dict(tmp, sites=["res"], layers=[0])
    cfg["sae"].update(widths=[512, 1024], epochs=4, checkpoint_every=10)
    cfg["storage"]["root"] = root
    # one CPU, so one Ray worker per CLI run: each cold worker imports torch, transformers and Prefect
    # (~7 CPU-s here), and these runs are mostly one chain of units anyway
    cfg["orchestration"]["num_cpus"] = 1
    seeded_prefect_home(Path(cfg["orchestration"]["prefect_home"]))  # for a run that starts its own server
    if endpoint:
        cfg["storage"]["storage_options"] = {"endpoint_url": endpoint}
    cfg["orchestration"].update(orchestration)
    return cfg


def clean_reference(tmp_path_factory) -> Iterator[ReferenceRun]:
    """The body of the fault modules' `reference` fixture: a clean run of the fault suite on local disk, in a
    process of its own while the scenarios run, one for all of them (and never left running)."""
    ref = shared_reference(tmp_path_factory, "fault-reference", lambda tmp: fault_suite(tmp, str(tmp / "run")))
    yield ref
    ref.files()


def compared(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.startswith(LOCATION_DEPENDENT)}


def _default_sigint() -> None:
    """SIGINT as a terminal gives it: a shell without job control starts background commands with SIGINT
    ignored, which their children inherit, and Python then installs no KeyboardInterrupt for it (seen: a
    `make test` started with `&` from a script, where the CLI ran on through its SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Cli:
    """`python -m flows.cli ARGS` in the background, as a user starts it. Without `api_url` it starts its own
    Prefect server; RAY_TMPDIR is a fresh short folder of its own, so its Ray processes can be found."""

    def __init__(self, tmp: Path, name: str, *args: str, api_url: str | None = None) -> None:
        self.ray_tmp = tempfile.mkdtemp(prefix="sf-faults-")  # short: Ray's socket paths live under it
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(COLUMNS="160", RAY_TMPDIR=self.ray_tmp, **({"PREFECT_API_URL": api_url} if api_url else {}))
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env,
                                         stdout=out, stderr=err, preexec_fn=_default_sigint)
        self.started = time.monotonic()

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.proc.args} still ran after {timeout} s:\n{self.stdout[-2000:]}\n"
                                 f"{self.stderr[-3000:]}")

    def signal(self, sig: int, timeout: float = 60) -> tuple[int, float]:
        """Send `sig`; its exit code and the seconds it took to exit."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.wait(timeout)
        return rc, time.monotonic() - t0

    def close(self) -> None:
        """Kill it if it still runs (a test failed half-way) and remove its Ray folder."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def failed(self) -> str:
        return f"exit {self.proc.returncode}:\n{self.stdout[-2000:]}\n{self.stderr[-3000:]}"


def until(what: str, pred, cli: Cli, timeout: float = 180, every: float = 0.1):
    """Poll `pred()` until it returns something truthy, while `cli` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (got := pred()):
            return got
        assert cli.alive(), f"exited before {what}: {cli.failed()}"
        time.sleep(every)
    raise AssertionError(f"no {what} after {timeout} s")


def processes(*markers: str) -> dict[int, str]:
    """Live processes (zombies are gone) whose command line or environment holds a marker: a run's Ray
    processes name its RAY_TMPDIR, its Prefect server has its PREFECT_HOME in its environment."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            env = Path(f"/proc/{d}/environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if state != "Z" and any(m.encode() in cmd + b"\0" + env for m in markers):
            found[int(d)] = cmd.replace(b"\0", b" ").decode(errors="replace")[:160]
    return found


def statuses(root: StorageRoot) -> dict[str, str]:
    ledger = Ledger(root)
    return {f"{s}:{r.unit}": r.status for s in STAGE_NAMES for r in ledger.records(s)}


def running_by(root: StorageRoot, run_id: str) -> set[str]:
    ledger = Ledger(root)
    return {f"{s}:{r.unit}" for s in STAGE_NAMES for r in ledger.records(s)
            if r.status == "running" and r.run_id == run_id}


def training(root: StorageRoot, run_id: str) -> set[str]:
    """The run's running units once its train unit is among them (else empty)."""
    running = running_by(root, run_id)
    return running if "train:res/layer_0" in running else set()


def ended(root: StorageRoot) -> dict[str, str]:
    """When each complete unit ended, by unit key."""
    return {f"{s}:{r.unit}": str(r.ended_at) for s in STAGE_NAMES for r in Ledger(root).records(s)
            if r.status == "complete"}


def lease_run(root: StorageRoot, other_than: str | None = None) -> str | None:
    holder = current_lease(root)
    return holder.run_id if holder is not None and holder.run_id != other_than else None


def status_table(stdout: str) -> dict[str, dict[str, int]]:
    """`scopeflow status`'s table: per stage, its counts (units "?": not planned yet)."""
    cols = ("units", "done", "failed", "running", "stale", "pending")
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in STAGE_NAMES and len(parts) >= 7:
            rows[parts[0]] = {c: int(v) if v != "?" else None for c, v in zip(cols, parts[1:7])}
    assert set(rows) == set(STAGE_NAMES), stdout
    return rows


def read_back(root: StorageRoot, rel: str) -> None:
    """Read an output fully: every zarr array under it (each chunk's crc32c checked), every parquet file,
    every other file's bytes."""
    files = root.fs.find(root.fs_path(rel)) if not root.fs.isfile(root.fs_path(rel)) else [root.fs_path(rel)]
    assert files, f"{rel}: no files"
    base = root.fs_path("")
    for path in files:
        rel_path = path[len(base) + 1:]
        if rel_path.endswith("/zarr.json") and json.loads(root.fs.cat_file(path))["node_type"] == "array":
            arr = zarr.open_array(store=root.zarr_store(rel_path.rsplit("/", 1)[0], read_only=True), mode="r")
            assert arr[...].shape == arr.shape
        elif rel_path.endswith(".parquet"):
            pq.read_table(root.fs.open(path, "rb"))
        else:
            root.fs.cat_file(path)


def complete_outputs_read_back(root: StorageRoot) -> int:
    """No complete record points at a missing or partial output; returns how many outputs were read."""
    n = 0
    for stage in STAGE_NAMES:
        for rec in Ledger(root).records(stage):
            assert rec.status == "complete", (stage, rec.unit, rec.status)
            assert rec.outputs, (stage, rec.unit)
            for out in rec.outputs:
                read_back(root, out)
                n += 1
    return n


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Ray's node agents: after an unexpected raylet death each reports it to the GCS, which died too, and may
# hang there (seen with ray 2.60: both still up 60 s after their driver was SIGKILLed, SIGTERM ignored). They
# hold no unit and touch no storage root.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def gone_within(marker: str, timeout: float) -> tuple[float, dict[int, str]]:
    """Wait until a killed driver's Ray processes are gone (its workers first: one left running could still
    write to the ledger); returns the seconds it took and the node agents left, which are then killed."""
    t0 = time.monotonic()
    while (left := processes(marker)) and time.monotonic() - t0 < timeout:
        if all(c.startswith(RAY_AGENTS) for c in left.values()) and time.monotonic() - t0 > 5:
            break
        time.sleep(0.2)
    assert all(c.startswith(RAY_AGENTS) for c in left.values()), f"still running {timeout} s after their driver " \
                                                                    f"was killed: {left}"
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return time.monotonic() - t0, left


def assert_same_outputs(got: dict[str, bytes], reference: ReferenceRun) -> None:
    """Every output but those naming their location or time is the clean run's, byte for byte."""
    got, want = compared(got), compared(reference.files())
    assert set(got) ^ set(want) == set()
    assert [k for k in sorted(want) if got[k] != want[k]] == []


def assert_stopped_by_signal(f: dict, run: str) -> None:
    """What a signalled run `run` must have done (the facts its scenario recorded under `{run}_...`): exit
    130 within the limit, its running units recorded interrupted and none left running, a one-line notice
    saying how to resume, and its Ray instance gone."""
    assert f[f"{run}_rc"] == 130, f[f"{run}_err"]
    assert f[f"{run}_exit_s"] <= EXIT_LIMIT_S
    after = f[f"after_{run}"]
    assert f[f"{run}_running"] and all(after[k] == "interrupted" for k in f[f"{run}_running"]), after
    assert "running" not in after.values(), after
    assert re.search(r"interrupted after [\d.]+ s: running units are recorded interrupted; `scopeflow run .*` resumes",
                     f[f"{run}_err"]), f[f"{run}_err"]
    assert any("raylet" in c for c in f[f"{run}_procs"].values()), f[f"{run}_procs"]
    assert f[f"{run}_left"] == {}, f[f"{run}_left"]
