"""Faults, for real: the object store going away mid-extract (a TCP proxy between s3fs and moto's S3 server),
SIGINT / SIGTERM / SIGKILL sent to `scopeflow run`, and two runs on one storage root. Every run is the CLI
as a user starts it (Prefect server, Ray); every output is compared byte for byte with one clean reference.

One suite for the whole module: one site, one layer, SAEs wide enough that the train unit lasts ~5 s, so a
signal lands while it runs, with a checkpoint every 10 steps, so an interrupted unit has one to resume from.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
import zarr

from storage import layout
from storage.lease import current as current_lease
from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.registry import STAGE_NAMES
from tests.helpers import REPO, api_post, scopeflow, small_suite_dict, write_config
from tests.tcp_proxy import TcpProxy
from tests.test_s3 import _LOCATION_DEPENDENT, _files, _run_in_process

pytestmark = pytest.mark.slow

BUCKET = "scopeflow-test"
OUTAGE_S = 30.0
EXIT_LIMIT_S = 10.0
_WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


def _suite(tmp: Path, root: str, endpoint: str | None = None, **orchestration) -> dict:
    cfg = small_suite_dict(tmp, sites=["res"], layers=[0])
    cfg["sae"].update(widths=[512, 1024], epochs=4, checkpoint_every=10)
    cfg["storage"]["root"] = root
    if endpoint:
        cfg["storage"]["storage_options"] = {"endpoint_url": endpoint}
    cfg["orchestration"].update(orchestration)
    return cfg


def _compared(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if not k.startswith(_LOCATION_DEPENDENT)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded_assets) -> dict[str, bytes]:
    """A clean run's bytes (in this process, one torch thread as in a Ray worker), all but the outputs that
    name their own location or time."""
    tmp = tmp_path_factory.mktemp("reference")
    files = _compared(_files(_run_in_process(_suite(tmp, str(tmp / "run")))))
    assert any(k.startswith("saes/") for k in files) and any(k.startswith("evals/") for k in files)
    return files


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
                                         stdout=out, stderr=err)
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


def _until(what: str, pred, cli: Cli, timeout: float = 180, every: float = 0.1):
    """Poll `pred()` until it returns something truthy, while `cli` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (got := pred()):
            return got
        assert cli.alive(), f"exited before {what}: {cli.failed()}"
        time.sleep(every)
    raise AssertionError(f"no {what} after {timeout} s")


def _processes(*markers: str) -> dict[int, str]:
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


def _statuses(root: StorageRoot) -> dict[str, str]:
    ledger = Ledger(root)
    return {f"{s}:{r.unit}": r.status for s in STAGE_NAMES for r in ledger.records(s)}


def _running_by(root: StorageRoot, run_id: str) -> set[str]:
    ledger = Ledger(root)
    return {f"{s}:{r.unit}" for s in STAGE_NAMES for r in ledger.records(s)
            if r.status == "running" and r.run_id == run_id}


def _training(root: StorageRoot, run_id: str) -> set[str]:
    """The run's running units once its train unit is among them (else empty)."""
    running = _running_by(root, run_id)
    return running if "train:res/layer_0" in running else set()


def _ended(root: StorageRoot) -> dict[str, str]:
    """When each complete unit ended, by unit key."""
    return {f"{s}:{r.unit}": str(r.ended_at) for s in STAGE_NAMES for r in Ledger(root).records(s)
            if r.status == "complete"}


def _lease_run(root: StorageRoot, other_than: str | None = None) -> str | None:
    holder = current_lease(root)
    return holder.run_id if holder is not None and holder.run_id != other_than else None


def _status_table(stdout: str) -> dict[str, dict[str, int]]:
    """`scopeflow status`'s table: per stage, its counts (units "?": not planned yet)."""
    cols = ("units", "done", "failed", "running", "stale", "pending")
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in STAGE_NAMES and len(parts) >= 7:
            rows[parts[0]] = {c: int(v) if v != "?" else None for c, v in zip(cols, parts[1:7])}
    assert set(rows) == set(STAGE_NAMES), stdout
    return rows


def _read_back(root: StorageRoot, rel: str) -> None:
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


def _complete_outputs_read_back(root: StorageRoot) -> int:
    """No complete record points at a missing or partial output; returns how many outputs were read."""
    n = 0
    for stage in STAGE_NAMES:
        for rec in Ledger(root).records(stage):
            assert rec.status == "complete", (stage, rec.unit, rec.status)
            assert rec.outputs, (stage, rec.unit)
            for out in rec.outputs:
                _read_back(root, out)
                n += 1
    return n


# --------------------------------------------------------------------------- the object store goes away


def _api_get(api_url: str, path: str) -> list[dict]:
    with urllib.request.urlopen(f"{api_url}{path}", timeout=10) as r:
        return json.loads(r.read())


def _task_runs(api_url: str, names: set[str], since: float) -> list[dict]:
    """This run's task runs of those names (created after `since`, a time.time()), with their states."""
    runs = [r for r in api_post(api_url, "/task_runs/filter", {"task_runs": {"name": {"any_": sorted(names)}},
                                                                "limit": 200})
            if _ts(r["created"]) >= since]
    for r in runs:
        r["states"] = sorted(_api_get(api_url, f"/task_run_states/?task_run_id={r['id']}"), key=lambda s: s["timestamp"])
    return runs


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def outage(tmp_path_factory, s3_endpoint, prefect_server, reference):
    """The suite on S3 through a proxy that goes down at the first PUT of activation data (the extract unit
    has written its arrays' metadata, not their rows) and stays down 30 s, refusing connections."""
    tmp = tmp_path_factory.mktemp("outage")
    prefix = f"faults/{uuid.uuid4().hex[:10]}"
    trigger = re.compile(rb"PUT /" + f"{BUCKET}/{prefix}/".encode() + rb"activations/[^ ?]*/x/c/")
    proxy = TcpProxy("127.0.0.1", urlparse(s3_endpoint).port, trigger=trigger).start()
    url = f"s3://{BUCKET}/{prefix}"
    path = write_config(tmp / "suite.yaml", _suite(tmp, url, proxy.url, task_retries=4,
                                                   retry_delay_seconds=[5, 10, 15, 20]))
    direct = StorageRoot(url, {"endpoint_url": s3_endpoint})  # the test's own view, around the proxy
    since = time.time()
    cli = Cli(tmp, "run", "run", str(path), api_url=prefect_server)
    try:
        _until("outage", proxy.triggered.is_set, cli, every=0.05)
        t_down, t_down_wall = proxy.downs[0], time.time()
        at_outage = _statuses(direct)
        refused = _refused(proxy.port)
        time.sleep(max(0.0, t_down + OUTAGE_S - time.monotonic()))
        proxy.up()
        rc = cli.wait(400)
    finally:
        proxy.stop()
        cli.close()
    direct.fs.invalidate_cache()  # listings the polling cached
    facts = dict(rc=rc, cli=cli, direct=direct, at_outage=at_outage, refused=refused, t_down_wall=t_down_wall,
                 run_s=time.monotonic() - cli.started, outage_s=proxy.ups[0] - t_down, dropped=proxy.dropped,
                 accepted=proxy.accepted, task_runs=_task_runs(prefect_server, {"tokenize:corpus", "extract:shard_00000",
                                                                                "extract:shard_00001"}, since))
    print(f"\noutage: run {facts['run_s']:.1f} s, down {facts['outage_s']:.1f} s, {proxy.dropped} open "
          f"connection(s) reset, ledger at the outage {at_outage}")
    ledger = Ledger(direct)
    for r in facts["task_runs"]:
        rec = ledger.get(*r["name"].split(":", 1))
        r["ledger_attempt"] = rec.attempt
        print(f"  {r['name']}: ledger attempt {rec.attempt}, run_count {r['run_count']}, states " + ", ".join(
            f"{s['name']}@{_ts(s['timestamp']) - t_down_wall:+.1f}s" for s in r["states"]))
    return facts


def test_an_object_store_outage_mid_extract_is_retried_and_the_run_completes(outage):
    assert outage["rc"] == 0, outage["cli"].failed()
    # the outage hit while an extract unit was running (its record said so on the store itself)
    assert "running" in {s for k, s in outage["at_outage"].items() if k.startswith("extract:")}, outage["at_outage"]
    assert outage["outage_s"] >= OUTAGE_S and outage["refused"]
    # ... and failed a unit, which Prefect retried after the store was back
    retried = [r for r in outage["task_runs"] if r["run_count"] >= 2]
    assert retried, [(r["name"], r["run_count"]) for r in outage["task_runs"]]
    for r in retried:
        assert r["state_type"] == "COMPLETED" and "AwaitingRetry" in [s["name"] for s in r["states"]], r["states"]
    ledger = Ledger(outage["direct"])
    assert all(ledger.get(*r["name"].split(":", 1)).status == "complete" for r in retried)
    # the unit the outage caught running was retried, and its ledger record counts that (the ledger counts the
    # attempts whose `running` record reached the store; a unit that started during the outage counts fewer)
    hit = {k for k, status in outage["at_outage"].items() if status == "running"}
    assert hit <= {r["name"] for r in retried}
    assert all(r["ledger_attempt"] >= 2 for r in retried if r["name"] in hit), retried


def test_after_the_outage_every_output_is_byte_identical_to_a_clean_run(outage, reference):
    got = _files(outage["direct"])
    assert not [k for k in got if k.startswith("checkpoints/") or k == layout.LEASE]
    got = _compared(got)
    assert set(got) ^ set(reference) == set()
    assert [k for k in sorted(reference) if got[k] != reference[k]] == []


def test_after_the_outage_no_complete_record_points_at_a_partial_output(outage):
    assert _complete_outputs_read_back(outage["direct"]) >= 7


# --------------------------------------------------------------------------- signals and the lease


@pytest.fixture(scope="module")
def lease_runs(tmp_path_factory, prefect_server, reference):
    """On one local root, in turn:
    A runs; B (same config) is refused while A holds the root and `status` runs meanwhile; A is SIGKILLed
    while its train unit runs and `status` is read;
    C takes over the lease, starts its own Prefect server, and gets SIGTERM while its train unit runs;
    D gets SIGINT while its train unit runs; E resumes to completion."""
    tmp = tmp_path_factory.mktemp("lease")
    cfg = _suite(tmp, str(tmp / "run"))
    server_marker = f"PREFECT_HOME={Path(cfg['orchestration']['prefect_home']).resolve()}\0"
    launched: list[Cli] = []

    def start(name: str, *args: str, api_url: str | None = None) -> Cli:
        launched.append(cli := Cli(tmp, name, *args, api_url=api_url))
        return cli

    try:
        return _lease_scenario(tmp, cfg, prefect_server, start, server_marker)
    finally:  # after a failure half-way: what is left of the runs, C's own Prefect server among it
        for cli in launched:
            cli.close()
        for pid in _processes(server_marker):
            os.kill(pid, signal.SIGKILL)


def _lease_scenario(tmp: Path, cfg: dict, prefect_server: str, start, server_marker: str) -> dict:
    path = str(write_config(tmp / "suite.yaml", cfg))
    root = StorageRoot(cfg["storage"]["root"])
    f: dict = {"root": root, "path": path}
    t0 = time.monotonic()
    marks = f["marks"] = {}

    def mark(name: str) -> None:
        marks[name] = round(time.monotonic() - t0, 1)

    # A holds the root; B is refused; status works meanwhile. A's driver is paused (SIGSTOP) while they run
    # (5-25 s here): it stays alive and holds the lease, the unit it runs goes on, it submits nothing new, so
    # it has not yet trained when they return
    a = start("a", "run", path, api_url=prefect_server)
    f["a_run"] = _until("A's lease", lambda: _lease_run(root), a)
    f["lease_a"] = current_lease(root)
    mark("A holds the lease")
    a.proc.send_signal(signal.SIGSTOP)
    b, status = start("b", "run", path, api_url=prefect_server), start("status-a", "status", path)
    f["b_rc"], f["b_s"] = b.wait(120), time.monotonic() - b.started
    f["b_err"], f["b_out"], f["b_ray"] = b.stderr, b.stdout, os.listdir(b.ray_tmp)
    f["status_a_rc"], f["status_a"] = status.wait(120), status.stdout
    f["a_alive_after_b"] = a.alive()
    a.proc.send_signal(signal.SIGCONT)
    mark("B refused, status read")

    # A is SIGKILLed while its train unit runs (after its first checkpoint); it cannot clean up
    checkpoint = Path(root.fs_path(layout.checkpoint("res", 0)))
    f["a_running"] = _until("A's train unit running with a checkpoint",
                            lambda: checkpoint.exists() and _training(root, f["a_run"]), a)
    f["a_procs"] = _processes(a.ray_tmp)
    mark("A trains")
    a.proc.kill()
    a.proc.wait()
    f["a_ray_gone_s"], f["a_agents_left"] = _gone_within(a.ray_tmp, 15)
    f["after_kill"] = _statuses(root)
    s = scopeflow(prefect_server, "status", path)
    f["status_stale_rc"], f["status_stale"] = s.returncode, s.stdout
    f["complete_at_kill"] = _ended(root)
    mark("stale status read")

    # C takes over, with its own Prefect server, and is SIGTERMed while it trains
    c = start("c", "run", path)
    f["c_run"] = _until("C's lease", lambda: _lease_run(root, other_than=f["a_run"]), c)
    f["c_running"] = _until("C's train unit running", lambda: _training(root, f["c_run"]), c, timeout=240)
    mark("C trains")
    f["c_procs"] = _processes(c.ray_tmp, server_marker)
    f["c_api"] = re.search(r"Prefect API: (\S+)", c.stdout)
    f["c_rc"], f["c_exit_s"] = c.signal(signal.SIGTERM)
    f["c_left"] = _processes(c.ray_tmp, server_marker)
    f["c_left"].update({p: "(seen before)" for p in f["c_procs"] if _alive(p)})
    f["after_c"], f["c_err"], f["c_out"] = _statuses(root), c.stderr, c.stdout
    f["lease_after_c"] = current_lease(root)

    # D (on the shared server) is interrupted with SIGINT while it trains
    d = start("d", "run", path, api_url=prefect_server)
    f["d_run"] = _until("D's lease", lambda: _lease_run(root), d)
    f["d_running"] = _until("D's train unit running", lambda: _training(root, f["d_run"]), d)
    mark("D trains")
    f["d_procs"] = _processes(d.ray_tmp)
    f["d_rc"], f["d_exit_s"] = d.signal(signal.SIGINT)
    f["d_left"] = _processes(d.ray_tmp)
    f["after_d"], f["d_err"] = _statuses(root), d.stderr

    # E resumes to completion
    mark("D exited")
    t_e = time.monotonic()
    e = scopeflow(prefect_server, "run", path)
    f["e"], f["e_s"] = e, time.monotonic() - t_e
    mark("E done")
    print(f"\nlease runs: B refused after {f['b_s']:.1f} s; A's Ray gone {f['a_ray_gone_s']:.1f} s after SIGKILL "
          f"(node agents left and killed: {sorted(c.split()[0] for c in f['a_agents_left'].values())}); "
          f"C exited {f['c_exit_s']:.2f} s after SIGTERM (rc {f['c_rc']}); D exited {f['d_exit_s']:.2f} s after "
          f"SIGINT (rc {f['d_rc']}); E resumed in {f['e_s']:.1f} s\n  at s: {marks}")
    return f


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Ray's node agents: after an unexpected raylet death each reports it to the GCS, which died too, and may
# hang there (seen with ray 2.60: both still up 60 s after their driver was SIGKILLed, SIGTERM ignored). They
# hold no unit and touch no storage root.
_RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _gone_within(marker: str, timeout: float) -> tuple[float, dict[int, str]]:
    """Wait until a killed driver's Ray processes are gone (its workers first: one left running could still
    write to the ledger); returns the seconds it took and the node agents left, which are then killed."""
    t0 = time.monotonic()
    while (left := _processes(marker)) and time.monotonic() - t0 < timeout:
        if all(c.startswith(_RAY_AGENTS) for c in left.values()) and time.monotonic() - t0 > 5:
            break
        time.sleep(0.2)
    assert all(c.startswith(_RAY_AGENTS) for c in left.values()), f"still running {timeout} s after their driver " \
                                                                    f"was killed: {left}"
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return time.monotonic() - t0, left


def test_a_second_run_on_the_root_is_refused_at_once_naming_the_holder(lease_runs):
    f = lease_runs
    lease = f["lease_a"]
    assert f["a_alive_after_b"]  # refused by a live holder, not by a finished one
    # CLI start-up (imports) is ~5 s here alone, 25 s with A's Ray and `status` starting on the same 2 cores
    assert f["b_rc"] != 0 and f["b_s"] < 60, (f["b_rc"], f["b_s"])
    lines = f["b_err"].strip().splitlines()
    assert len(lines) == 1, f["b_err"]
    assert re.fullmatch(rf"error: storage root {re.escape(f['root'].url)} is held by run {lease.run_id} on host "
                        rf"{re.escape(socket.gethostname())} \(pid {lease.pid}\) since {_WHEN} \(heartbeat \d+ s "
                        rf"ago\); wait for it, or stop it", lines[0]), lines[0]
    assert lease.started_at.strftime("%Y-%m-%d %H:%M:%S UTC") in lines[0]
    assert "Prefect API" not in f["b_out"] and f["b_ray"] == []  # it started nothing
    # status works while A runs, and names the holder
    assert f["status_a_rc"] == 0 and f"lease: held by run {lease.run_id} on host" in f["status_a"], f["status_a"]
    assert f"(pid {lease.pid}) since " in f["status_a"]


def test_a_sigkilled_runs_running_record_shows_as_stale(lease_runs):
    f = lease_runs
    assert f["a_procs"], "A's Ray processes were not found by its RAY_TMPDIR"
    assert all(f["after_kill"][k] == "running" for k in f["a_running"])  # nothing could mark them
    assert f["status_stale_rc"] == 0, f["status_stale"]
    table = _status_table(f["status_stale"])
    stale = {stage: r["stale"] for stage, r in table.items() if r["stale"]}
    assert sum(r["running"] for r in table.values()) == 0, f["status_stale"]
    assert stale == {stage: sum(k.startswith(stage + ":") for k in f["a_running"]) for stage in stale}
    assert sum(stale.values()) == len(f["a_running"]) >= 1, f["status_stale"]
    assert re.search(rf"lease: held by run {f['a_run']} .*stale: pid \d+ no longer runs on this host", f["status_stale"])


def test_the_next_run_takes_over_the_lease_with_a_one_line_notice(lease_runs):
    f = lease_runs
    notices = [ln for ln in f["c_err"].splitlines() if ln.startswith("notice:")]
    assert len(notices) == 1, f["c_err"]
    assert re.fullmatch(rf"notice: taking over the lease of run {f['a_run']} on host {re.escape(socket.gethostname())} "
                        rf"\(pid {f['lease_a'].pid}\) \(pid {f['lease_a'].pid} no longer runs on this host\)",
                        notices[0]), notices[0]
    assert f["c_run"] != f["a_run"]


@pytest.mark.parametrize("run, sig", [("c", "SIGTERM"), ("d", "SIGINT")])
def test_a_signal_stops_the_run_within_10_s_recording_its_units_interrupted(lease_runs, run, sig):
    f = lease_runs
    assert f[f"{run}_rc"] == 130, f[f"{run}_err"]
    assert f[f"{run}_exit_s"] <= EXIT_LIMIT_S
    after = f[f"after_{run}"]
    assert f[f"{run}_running"] and all(after[k] == "interrupted" for k in f[f"{run}_running"]), after
    assert "running" not in after.values(), after
    assert re.search(r"interrupted after [\d.]+ s: running units are recorded interrupted; `scopeflow run .*` resumes",
                     f[f"{run}_err"]), f[f"{run}_err"]
    # its Ray instance (and, for C, the Prefect server it started) are gone, and the lease is released
    assert any("raylet" in c for c in f[f"{run}_procs"].values()), f[f"{run}_procs"]
    assert f[f"{run}_left"] == {}, f[f"{run}_left"]
    if run == "c":
        assert f["c_api"] is not None and any("prefect server start" in c for c in f["c_procs"].values())
        assert f["lease_after_c"] is None


def test_the_resumed_run_completes_with_the_bytes_of_a_clean_run(lease_runs, reference):
    f = lease_runs
    e = f["e"]
    assert e.returncode == 0, e.stdout[-2000:] + e.stderr[-3000:]
    assert "notice:" not in e.stderr  # C and D released the lease
    # what was complete when A was killed did not run again; the rest (train at least) did
    ran = re.search(r"ran (\d+) unit\(s\) in [\d.]+ s \((.*?)\)", " ".join(e.stdout.split()))
    assert ran and int(ran[1]) >= 3 and "train 1/1, evaluate 1/1, report 1/1" in ran[2], e.stdout
    ended = _ended(f["root"])
    assert {k: ended[k] for k in f["complete_at_kill"]} == f["complete_at_kill"]
    got = _files(f["root"])
    assert not [k for k in got if k.startswith("checkpoints/") or "lease" in k], sorted(got)[:20]
    got = _compared(got)
    assert set(got) ^ set(reference) == set()
    assert [k for k in sorted(reference) if got[k] != reference[k]] == []
    assert _complete_outputs_read_back(f["root"]) >= 7
