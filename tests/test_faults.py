"""Signals and the lease, for real: SIGKILL, SIGTERM and SIGINT sent to `scopeflow run`, and two runs on one
storage root (a killed Ray worker: tests/test_interrupts.py). Every signalled run is the CLI as a user starts
it (Prefect server, Ray); every output is compared byte for byte with one clean reference run of the suite."""
from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from storage import layout
from storage.lease import current as current_lease
from storage.root import StorageRoot
from tests.faults import (Cli, alive, assert_same_outputs, assert_stopped_by_signal, clean_reference,
                          complete_outputs_read_back, ended, fault_suite, gone_within, lease_run, processes,
                          status_table, statuses, training, until)
from tests.helpers import ReferenceRun, cli, root_files, write_config

pytestmark = pytest.mark.slow

_WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded_assets) -> ReferenceRun:
    yield from clean_reference(tmp_path_factory)


@pytest.fixture(scope="module")
def lease_runs(tmp_path_factory, prefect_server, ray_session, reference):
    """On one local root, in turn:
    A runs; B (same config) is refused while A holds the root and `status` runs meanwhile; A is SIGKILLed
    while its train unit runs and `status` is read;
    C takes over the lease, starts its own Prefect server, and gets SIGTERM while its train unit runs;
    D (on the session's server) gets SIGINT while its train unit runs; E resumes to completion. One chain of
    runs on one root: each signalled run resumes the last one's train unit, as a user's next run would. The
    `status` reads and E are the CLI's code in this process, on the session's warm Ray (tests.helpers.cli):
    they are not what is tested for signals."""
    tmp = tmp_path_factory.mktemp("lease")
    cfg = fault_suite(tmp, str(tmp / "run"))
    server_marker = f"PREFECT_HOME={Path(cfg['orchestration']['prefect_home']).resolve()}\0"
    launched: list[Cli] = []

    def start(name: str, *args: str, api_url: str | None = None) -> Cli:
        launched.append(run := Cli(tmp, name, *args, api_url=api_url))
        return run

    try:
        return _lease_scenario(tmp, cfg, prefect_server, start, server_marker)
    finally:  # after a failure half-way: what is left of the runs, C's own Prefect server among it
        for run in launched:
            run.close()
        for pid in processes(server_marker):
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
    f["a_run"] = until("A's lease", lambda: lease_run(root), a)
    f["lease_a"] = current_lease(root)
    mark("A holds the lease")
    a.proc.send_signal(signal.SIGSTOP)
    b = start("b", "run", path, api_url=prefect_server)
    status = cli("status", path)  # while B starts
    f["status_a_rc"], f["status_a"] = status.returncode, status.stdout
    f["b_rc"], f["b_s"] = b.wait(120), time.monotonic() - b.started
    f["b_err"], f["b_out"], f["b_ray"] = b.stderr, b.stdout, os.listdir(b.ray_tmp)
    f["a_alive_after_b"] = a.alive()
    a.proc.send_signal(signal.SIGCONT)
    mark("B refused, status read")

    # A is SIGKILLed while its train unit runs (after its first checkpoint); it cannot clean up
    checkpoint = Path(root.fs_path(layout.checkpoint("res", 0)))
    f["a_running"] = until("A's train unit running with a checkpoint",
                            lambda: checkpoint.exists() and training(root, f["a_run"]), a)
    f["a_procs"] = processes(a.ray_tmp)
    mark("A trains")
    a.proc.kill()
    a.proc.wait()
    f["a_ray_gone_s"], f["a_agents_left"] = gone_within(a.ray_tmp, 15)
    f["after_kill"] = statuses(root)
    s = cli("status", path)
    f["status_stale_rc"], f["status_stale"] = s.returncode, s.stdout
    f["complete_at_kill"] = ended(root)
    mark("stale status read")

    # C takes over, with its own Prefect server, and is SIGTERMed while it trains
    c = start("c", "run", path)
    f["c_run"] = until("C's lease", lambda: lease_run(root, other_than=f["a_run"]), c)
    f["c_running"] = until("C's train unit running", lambda: training(root, f["c_run"]), c, timeout=240)
    mark("C trains")
    f["c_procs"] = processes(c.ray_tmp, server_marker)
    f["c_api"] = re.search(r"Prefect API: (\S+)", c.stdout)
    f["c_rc"], f["c_exit_s"] = c.signal(signal.SIGTERM)
    f["c_left"] = processes(c.ray_tmp, server_marker)
    f["c_left"].update({p: "(seen before)" for p in f["c_procs"] if alive(p)})
    f["after_c"], f["c_err"], f["c_out"] = statuses(root), c.stderr, c.stdout
    f["lease_after_c"] = current_lease(root)

    mark("C exited")

    # D resumes on the session's server and gets SIGINT (a terminal's Ctrl-C) while it trains
    d = start("d", "run", path, api_url=prefect_server)
    f["d_run"] = until("D's lease", lambda: lease_run(root, other_than=f["c_run"]), d)
    f["d_running"] = until("D's train unit running", lambda: training(root, f["d_run"]), d, timeout=240)
    f["d_procs"] = processes(d.ray_tmp)
    f["d_rc"], f["d_exit_s"] = d.signal(signal.SIGINT)
    f["d_left"] = processes(d.ray_tmp)
    f["after_d"], f["d_err"] = statuses(root), d.stderr
    mark("D exited")

    # E resumes to completion
    t_e = time.monotonic()
    e = cli("run", path)
    f["e"], f["e_s"] = e, time.monotonic() - t_e
    mark("E done")
    print(f"\nlease runs: B refused after {f['b_s']:.1f} s; A's Ray gone {f['a_ray_gone_s']:.1f} s after SIGKILL "
          f"(node agents left and killed: {sorted(c.split()[0] for c in f['a_agents_left'].values())}); "
          f"C exited {f['c_exit_s']:.2f} s after SIGTERM (rc {f['c_rc']}), D {f['d_exit_s']:.2f} s after SIGINT "
          f"(rc {f['d_rc']}); E resumed in {f['e_s']:.1f} s\n"
          f"  at s: {marks}")
    return f


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
    # the driver could mark nothing, but a unit's worker that outlives it by a moment can record its own
    # failure as Ray stops it (once under load a record of A's was no longer `running` after the kill)
    after = {k: f["after_kill"][k] for k in f["a_running"]}
    assert set(after.values()) <= {"running", "failed"}, (f["a_running"], f["after_kill"])
    left = {k for k, status in after.items() if status == "running"}
    assert f["status_stale_rc"] == 0, f["status_stale"]
    table = status_table(f["status_stale"])
    stale = {stage: r["stale"] for stage, r in table.items() if r["stale"]}
    assert sum(r["running"] for r in table.values()) == 0, f["status_stale"]
    assert stale == {stage: sum(k.startswith(stage + ":") for k in left) for stage in stale}
    assert sum(stale.values()) == len(left), f["status_stale"]
    assert re.search(rf"lease: held by run {f['a_run']} .*stale: pid \d+ no longer runs on this host", f["status_stale"])


def test_the_next_run_takes_over_the_lease_with_a_one_line_notice(lease_runs):
    f = lease_runs
    notices = [ln for ln in f["c_err"].splitlines() if ln.startswith("notice:")]
    assert len(notices) == 1, f["c_err"]
    assert re.fullmatch(rf"notice: taking over the lease of run {f['a_run']} on host {re.escape(socket.gethostname())} "
                        rf"\(pid {f['lease_a'].pid}\) \(pid {f['lease_a'].pid} no longer runs on this host\)",
                        notices[0]), notices[0]
    assert f["c_run"] != f["a_run"]


def test_sigterm_stops_the_run_within_10_s_recording_its_units_interrupted(lease_runs):
    f = lease_runs
    assert_stopped_by_signal(f, "c")
    # the Prefect server it started is gone too, and the lease is released
    assert f["c_api"] is not None and any("prefect server start" in c for c in f["c_procs"].values())
    assert f["lease_after_c"] is None


def test_sigint_stops_the_run_within_10_s_recording_its_units_interrupted(lease_runs):
    f = lease_runs
    assert_stopped_by_signal(f, "d")
    assert "notice:" not in f["d_err"]  # C released the lease


def test_the_resumed_run_completes_with_the_bytes_of_a_clean_run(lease_runs, reference):
    f = lease_runs
    e = f["e"]
    assert e.returncode == 0, e.stdout[-2000:] + e.stderr[-3000:]
    assert "notice:" not in e.stderr  # C and D released the lease
    # what was complete when A was killed did not run again; the rest (train at least) did
    ran = re.search(r"ran (\d+) unit\(s\) in [\d.]+ s \((.*?)\)", " ".join(e.stdout.split()))
    assert ran and int(ran[1]) >= 3 and "train 1/1, evaluate 1/1, inspect 1/1, report 1/1" in ran[2], e.stdout
    ended_at = ended(f["root"])
    assert {k: ended_at[k] for k in f["complete_at_kill"]} == f["complete_at_kill"]
    got = root_files(f["root"])
    assert not [k for k in got if k.startswith("checkpoints/") or "lease" in k], sorted(got)[:20]
    assert_same_outputs(got, reference)
    assert complete_outputs_read_back(f["root"]) >= 7
