"""The root lease (storage/lease.py): one run holds a storage root at a time, on local disk and on S3 (moto's
server from conftest's `s3_endpoint`, real HTTP through s3fs).

What moto 5.2.5 honours, measured by test_moto_honours_the_conditional_requests_the_lease_relies_on:
PUT with If-None-Match: * (412 PreconditionFailed, Condition If-None-Match; s3fs 2026.9.0 raises
FileExistsError, as it does for its own `pipe_file(..., mode="create")`), PUT with If-Match: <etag> (412 on a
wrong ETag, 404 NoSuchKey on a missing key), DELETE with If-Match (412 on a wrong ETag). moto evaluates the
condition in its request handler before it stores the object, not under a lock, so on its threaded server
a create-only PUT is atomic only in practice: no round of the races below has had two winners (nor, while
this was written, 200 rounds of 8 concurrent raw create-only PUTs, or 60 rounds of the S3 race below).

The local races run with flock, as on a local disk (0 double winners in 100 rounds); without flock (as on
NFS) 1 stale round in 50 had two winners, the race RootLease.acquire documents, so that path is tested alone.
"""
from __future__ import annotations

import errno
import fcntl
import multiprocessing as mp
import os
import re
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from storage import layout
from storage.lease import LeaseHeldError, LeaseLostError, LeaseRecord, RootLease, _S3Store, acquire, current, pid_alive
from storage.root import StorageRoot

HOST = socket.gethostname()
BUCKET = "scopeflow-test"
# a lease held this long outlasts a refusal on a loaded machine; then it goes stale and is taken over
_HELD_S = 2.0


def _s3_root(endpoint: str) -> StorageRoot:
    return StorageRoot(f"s3://{BUCKET}/lease-{uuid.uuid4().hex[:10]}", {"endpoint_url": endpoint})


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> StorageRoot:
    if request.param == "local":
        return StorageRoot(str(tmp_path / "run"))
    return _s3_root(request.getfixturevalue("s3_endpoint"))


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _plant(root: StorageRoot, *, host: str = "other-host", pid: int = 4242, run_id: str = "r-old",
           heartbeat_ago_s: float = 0.0, timeout_s: float = 60.0) -> LeaseRecord:
    """The lease.json another run left behind (on local disk its heartbeat is the file's mtime too)."""
    beat = datetime.now(timezone.utc) - timedelta(seconds=heartbeat_ago_s)
    rec = LeaseRecord(host=host, pid=pid, run_id=run_id, started_at=beat - timedelta(minutes=5),
                      heartbeat_at=beat, timeout_s=timeout_s)
    root.write_bytes(layout.LEASE, rec.model_dump_json().encode())
    if root.is_local:
        os.utime(root.fs_path(layout.LEASE), (beat.timestamp(), beat.timestamp()))
    return rec


def test_a_second_run_is_refused_in_one_line_naming_the_holder_until_the_first_releases(root):
    first = acquire(root, "r-1")
    assert first.notice is None
    with pytest.raises(LeaseHeldError) as refused:
        acquire(root, "r-2")
    err = refused.value
    # the heartbeat's age is whole seconds since it was written: 0 on a quiet machine, more on a loaded one
    said = re.fullmatch(re.escape(f"storage root {root.url} is held by run r-1 on host {HOST} (pid {os.getpid()}) "
                                  f"since {_when(first.record.started_at)} (heartbeat ") + r"(\d+)"
                        + re.escape(" s ago); wait for it, or stop it"), str(err))
    assert said and int(said[1]) <= 30, str(err)
    assert (err.run_id, err.host, err.pid, err.since) == ("r-1", HOST, os.getpid(), first.record.started_at)
    seen = current(root)  # what `status` reads: the holder, without taking the lease
    assert (seen.run_id, seen.host, seen.pid, seen.is_stale()) == ("r-1", HOST, os.getpid(), False)
    assert seen.summary().startswith(f"held by run r-1 on host {HOST} (pid {os.getpid()}) since ")
    first.heartbeat()
    assert first.release() is True
    assert current(root) is None
    with acquire(root, "r-2") as second:
        assert current(root).run_id == "r-2" and second.notice is None
    assert current(root) is None


def test_a_lease_whose_heartbeat_is_older_than_its_timeout_is_taken_over_with_a_notice(root):
    old = _plant(root, heartbeat_ago_s=600, timeout_s=60)
    at_600 = old.heartbeat_at + timedelta(seconds=600)
    assert current(root).is_stale() and "stale: heartbeat 600 s old, timeout 60 s" in current(root).summary(now=at_600)
    assert not current(root).is_stale(now=old.heartbeat_at + timedelta(seconds=59))
    lease = acquire(root, "r-new")
    took = re.fullmatch(re.escape(f"took over the lease of run r-old on host other-host (pid 4242), gone since "
                                  f"{_when(old.heartbeat_at)} (heartbeat ") + r"(\d+)" + re.escape(" s old, timeout 60 s)"),
                        lease.notice)
    assert took and 600 <= int(took[1]) <= 630, lease.notice
    assert current(root).run_id == "r-new"
    assert lease.release()


def test_a_live_holder_on_another_host_is_not_judged_by_its_pid(root):
    _plant(root, host="other-host", pid=2**22 + 17, heartbeat_ago_s=1)  # no such pid here: not ours to check
    with pytest.raises(LeaseHeldError, match="held by run r-old on host other-host"):
        acquire(root, "r-new")


def test_a_lease_whose_pid_is_gone_on_this_host_is_taken_over(root):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    _plant(root, host=HOST, pid=proc.pid, heartbeat_ago_s=1, timeout_s=3600)
    lease = acquire(root, "r-new")
    assert lease.notice.startswith(f"took over the lease of run r-old on host {HOST} (pid {proc.pid}), gone since ")
    assert lease.notice.endswith(f"(pid {proc.pid} no longer runs on this host)")
    assert lease.release()


def test_a_holder_that_stops_heartbeating_loses_the_lease_and_its_release_leaves_the_new_one(root):
    stalled = acquire(root, "r-1", timeout_s=0.3)
    time.sleep(0.5)
    taker = acquire(root, "r-2", timeout_s=60)
    assert taker.notice.startswith(f"took over the lease of run r-1 on host {HOST} (pid {os.getpid()})")
    with pytest.raises(LeaseLostError, match="it is now held by run r-2"):
        stalled.heartbeat()
    assert stalled.release() is False  # not ours any more: left alone
    assert current(root).run_id == "r-2"
    taker.heartbeat()
    assert taker.release() is True and current(root) is None


def test_a_background_heartbeat_keeps_a_short_lease_alive_and_stops_on_release(root):
    with acquire(root, "r-1", timeout_s=1.0).start_heartbeat(0.1) as lease:
        time.sleep(1.5)
        with pytest.raises(LeaseHeldError):
            acquire(root, "r-2")
        assert lease.lost is None and lease.last_error is None
        assert current(root).age_s() < 1.0
    assert not lease._thread.is_alive() and current(root) is None


def test_the_background_heartbeat_reports_a_lost_lease(root):
    lost = threading.Event()
    lease = acquire(root, "r-1", timeout_s=0.2)
    time.sleep(0.3)
    taker = acquire(root, "r-2")
    lease.start_heartbeat(0.05, on_lost=lambda e: lost.set())
    assert lost.wait(5) and isinstance(lease.lost, LeaseLostError)
    assert lease.release() is False and taker.release() is True


def _contend(url: str, options: dict, run_id: str, start, done, results) -> None:
    """One contender: all start together; the winner holds the lease until every contender has tried."""
    root = StorageRoot(url, options)
    start.wait()
    try:
        lease = RootLease.acquire(root, run_id, timeout_s=60)
        results.put(("won", run_id, lease.notice))
    except LeaseHeldError as e:
        lease = None
        results.put(("held", e.run_id, None))
    done.wait()
    if lease is not None:
        lease.release()


def _check_one_winner(outcomes: list[tuple], n: int, stale: bool) -> None:
    winners = [o for o in outcomes if o[0] == "won"]
    assert len(outcomes) == n and len(winners) == 1, outcomes
    assert all(o[1] == winners[0][1] for o in outcomes), outcomes  # the refused name the winner
    assert (winners[0][2] is not None) == stale


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_processes_racing_for_a_local_root_leave_exactly_one_holder(tmp_path, stale):
    ctx, n = mp.get_context("fork"), 8
    for rnd in range(4):
        root = StorageRoot(str(tmp_path / f"run{rnd}"))
        if stale:
            _plant(root, heartbeat_ago_s=600)
        start, done, results = ctx.Barrier(n, timeout=30), ctx.Barrier(n, timeout=30), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(root.url, {}, f"r-{rnd}-{i}", start, done, results))
                 for i in range(n)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=30) for _ in range(n)]
        for p in procs:
            p.join(30)
        _check_one_winner(outcomes, n, stale)
        assert current(root) is None and os.listdir(root.url) == []


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_threads_racing_for_an_s3_root_leave_exactly_one_holder(s3_endpoint, stale):
    n = 8
    assert _S3Store(_s3_root(s3_endpoint), None).caps == (True, True)  # probed before, not during, the race
    for rnd in range(4):
        root = _s3_root(s3_endpoint)
        if stale:
            _plant(root, heartbeat_ago_s=600)
        start, done, results = threading.Barrier(n, timeout=30), threading.Barrier(n, timeout=30), queue.Queue()
        threads = [threading.Thread(target=_contend, args=(root.url, root.storage_options, f"r-{rnd}-{i}", start,
                                                              done, results)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        _check_one_winner([results.get_nowait() for _ in range(results.qsize())], n, stale)
        assert current(root) is None


def test_moto_honours_the_conditional_requests_the_lease_relies_on(s3_endpoint):
    root = _s3_root(s3_endpoint)
    store = _S3Store(root, None)
    assert store.caps == (True, True)  # the probe: create-only PUT, and PUT on a wrong ETag, both refused
    etag = store.put(b"one", create=True)
    assert etag and store.put(b"two", create=True) is None
    assert store.put(b"three", match='"' + "f" * 32 + '"') is None
    assert root.read_bytes(layout.LEASE) == b"one"
    etag = store.put(b"four", match=etag)
    assert etag and root.read_bytes(layout.LEASE) == b"four"
    assert store.delete(match='"' + "f" * 32 + '"') is False and root.exists(layout.LEASE)
    assert store.delete(match=etag) is True and not root.exists(layout.LEASE)
    assert _S3Store(root, None).put(b"x", match=etag) is None  # If-Match on a missing key: 404, refused
    assert root.listdir("") == []  # the probe's scratch key is gone


def test_without_conditional_requests_s3_falls_back_to_read_check_write(s3_endpoint):
    root = _s3_root(s3_endpoint)
    # a lease that lasts long enough for the refusal on a loaded machine (moto's calls took >0.3 s in CI)
    first = acquire(root, "r-1", timeout_s=_HELD_S, conditional=False)
    with pytest.raises(LeaseHeldError):
        acquire(root, "r-2", conditional=False)
    time.sleep(_HELD_S + 0.1)
    taker = acquire(root, "r-2", conditional=False)
    assert taker.notice.startswith("took over the lease of run r-1")
    with pytest.raises(LeaseLostError):
        first.heartbeat()
    assert first.release() is False and taker.release() is True and current(root) is None


def test_a_local_filesystem_without_flock_still_takes_over_and_releases(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)  # as on NFS: the rename-aside path decides alone
    root = StorageRoot(str(tmp_path / "run"))
    first = acquire(root, "r-1", timeout_s=_HELD_S)
    with pytest.raises(LeaseHeldError):
        acquire(root, "r-2")
    time.sleep(_HELD_S + 0.1)
    taker = acquire(root, "r-2")
    assert taker.notice.startswith("took over the lease of run r-1")
    with pytest.raises(LeaseLostError):
        first.heartbeat()
    assert first.release() is False and current(root).run_id == "r-2"
    assert taker.release() is True and os.listdir(root.url) == []


def test_an_unreadable_lease_is_held_until_it_is_old(tmp_path):
    root = StorageRoot(str(tmp_path / "run"))
    root.write_bytes(layout.LEASE, b"{not json")
    with pytest.raises(LeaseHeldError, match=r"held by run \(unreadable lease.json\)"):
        acquire(root, "r-1")
    old = time.time() - 3600
    os.utime(root.fs_path(layout.LEASE), (old, old))
    lease = acquire(root, "r-1")
    assert lease.notice.startswith("took over the lease of run (unreadable lease.json)") and lease.release()
