"""The lease on a storage root: one run holds a root at a time.

`lease.json` names the holder (host, pid, run id, start, heartbeat). A second run is refused in one line naming
the holder (LeaseHeldError); a lease whose heartbeat is older than its timeout, or whose pid is gone on this
host, is taken over, with a one-line `notice`. `current` reads the lease and takes nothing (for `status`).

Local disk: created with O_CREAT|O_EXCL; takeovers and releases run one at a time under an flock on the root
folder, and a takeover renames its own file over the stale one (lease.json is never absent for a creator to
slip in). Without flock (NFS) a stale lease is renamed aside (one taker wins the rename), checked to be the
file judged stale, deleted and created anew. The holder keeps its file open and heartbeats set its mtime, so
a heartbeat never touches a lease another run has made since. S3: create-only PUT (If-None-Match: *);
takeover and heartbeats PUT on the ETag last seen (If-Match); release checks the holder, then DELETEs with
If-Match; what the store honours is probed once per bucket. The races left are listed at RootLease.acquire.
Staleness compares the holder's heartbeat with this host's clock: clocks must agree well within the timeout.
"""
from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import threading
import time
import uuid
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

from fsspec.asyn import sync
from pydantic import BaseModel, ConfigDict, ValidationError

from storage import layout
from storage.root import StorageRoot

DEFAULT_TIMEOUT_S = 120.0
_ATTEMPTS = 20
_SETTLE_S = 0.2
_UNREADABLE = "(unreadable lease.json)"
_CAPS: dict[tuple, tuple[bool, bool]] = {}  # (fs token, bucket) -> (create-only PUT, If-Match) honoured


def _when(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (True when that cannot be told)."""
    try:
        return pid <= 0 or os.kill(pid, 0) is None
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True


class LeaseRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str
    pid: int
    run_id: str
    started_at: datetime
    heartbeat_at: datetime
    timeout_s: float

    def age_s(self, now: datetime | None = None) -> float:
        """Seconds since the last heartbeat (0 when the holder's clock runs ahead of ours)."""
        return max(0.0, ((now or datetime.now(timezone.utc)) - self.heartbeat_at).total_seconds())

    def stale_reason(self, now: datetime | None = None) -> str | None:
        """Why the holder counts as gone, or None while it counts as alive."""
        if (age := self.age_s(now)) > self.timeout_s:
            return f"heartbeat {age:.0f} s old, timeout {self.timeout_s:g} s"
        if self.host == socket.gethostname() and not pid_alive(self.pid):
            return f"pid {self.pid} no longer runs on this host"
        return None

    def is_stale(self, now: datetime | None = None) -> bool:
        return self.stale_reason(now) is not None

    def holder(self) -> str:
        return f"run {self.run_id} on host {self.host} (pid {self.pid})"

    def summary(self, now: datetime | None = None) -> str:
        """One line for `status`: who holds the root, since when, and whether the holder looks gone."""
        line = f"held by {self.holder()} since {_when(self.started_at)} (heartbeat {self.age_s(now):.0f} s ago)"
        return f"{line}, stale: {reason}" if (reason := self.stale_reason(now)) else line

    def same_holder(self, other: LeaseRecord) -> bool:
        return self.model_dump(exclude={"heartbeat_at"}) == other.model_dump(exclude={"heartbeat_at"})


class LeaseHeldError(RuntimeError):
    """A live run holds the root; the facts are attributes, the message is one line."""

    def __init__(self, root_url: str, holder: LeaseRecord):
        self.root_url, self.holder = root_url, holder
        self.host, self.pid, self.run_id, self.since = holder.host, holder.pid, holder.run_id, holder.started_at
        self.heartbeat_age_s = holder.age_s()
        super().__init__(f"storage root {root_url} is held by {holder.holder()} since {_when(self.since)} "
                         f"(heartbeat {self.heartbeat_age_s:.0f} s ago); wait for it, or stop it")


class LeaseLostError(RuntimeError):
    """This run's lease is no longer lease.json: another run took it over (or someone removed it)."""

    def __init__(self, root_url: str, holder: LeaseRecord | None):
        self.root_url, self.holder = root_url, holder
        who = f"it is now held by {holder.holder()}" if holder else "lease.json is gone"
        super().__init__(f"lost the lease on storage root {root_url}: {who}")


def _encode(rec: LeaseRecord) -> bytes:
    return rec.model_dump_json(indent=2).encode() + b"\n"


def _decode(data: bytes, modified: datetime) -> LeaseRecord:
    """The record; a lease.json that does not parse is held by nobody known, stale once its file is old."""
    try:
        return LeaseRecord.model_validate_json(data)
    except (ValidationError, ValueError):
        return LeaseRecord(host="?", pid=0, run_id=_UNREADABLE, started_at=modified,
                           heartbeat_at=modified, timeout_s=DEFAULT_TIMEOUT_S)


class _LocalStore:
    """lease.json on local disk. A holder's token is the open descriptor of its own lease file, and its
    heartbeat is that file's mtime (set through the descriptor: atomic, and only ever on its own file)."""

    def __init__(self, root: StorageRoot):
        self.path = root.fs_path(layout.LEASE)
        self.dir = os.path.dirname(self.path)

    def read(self) -> tuple[LeaseRecord, int] | None:
        for attempt in range(5):  # a lease being created is empty for a moment
            try:
                with open(self.path, "rb") as f:
                    data, st = f.read(), os.fstat(f.fileno())
            except FileNotFoundError:
                return None
            rec = _decode(data, mtime := datetime.fromtimestamp(st.st_mtime, timezone.utc))
            if rec.run_id != _UNREADABLE or attempt == 4:
                return rec.model_copy(update={"heartbeat_at": max(rec.heartbeat_at, mtime)}), st.st_ino
            time.sleep(0.01)

    def create(self, rec: LeaseRecord, replace: bool = False) -> int | None:
        """Write the lease where there is none (or over it): its file's open descriptor, else None."""
        os.makedirs(self.dir, exist_ok=True)
        if replace:  # a private file renamed over lease.json: a reader sees the old lease or the new one
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".lease-new-")
        else:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return None
        try:
            os.write(fd, _encode(rec))
            os.fsync(fd)
        except OSError:  # a full disk, say: leave no empty lease behind
            os.close(fd)
            os.unlink(tmp if replace else self.path)
            raise
        if replace:
            os.rename(tmp, self.path)
        return fd

    def _is(self, fd: int, path: str) -> bool:
        try:
            return os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    @contextmanager
    def _serialized(self) -> Iterator[bool]:
        """Takeovers and releases one at a time: an flock on the root folder (the kernel drops it when its
        process dies). Yields whether it holds the lock (not on a filesystem without flock, e.g. NFS)."""
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            try:
                locked = fcntl.flock(fd, fcntl.LOCK_EX) is None
            except OSError:
                locked = False
            yield locked
        finally:
            os.close(fd)

    def _remove(self, ino: int) -> bool:
        """Delete lease.json if it is the file `ino`: renamed aside first (atomic: one run gets it), then
        deleted, or linked back if it is another file (a new lease made meanwhile)."""
        aside = os.path.join(self.dir, f".lease-old-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if not (ours := os.stat(aside).st_ino == ino):
            try:
                os.link(aside, self.path)
            except OSError:  # a newer lease is there already: the one set aside finds out at its next heartbeat
                pass
        os.unlink(aside)
        return ours

    def take(self, seen: tuple[LeaseRecord, int], rec: LeaseRecord) -> tuple[int | None, LeaseRecord | None]:
        with self._serialized() as locked:
            again = self.read()  # checked again under the lock: another run may have taken it meanwhile
            if again is None or not again[0].is_stale():
                return None, None
            if locked:  # no other run changes an existing lease.json now
                return self.create(rec, replace=True), again[0]
            if not self._remove(again[1]):
                return None, None
        return self.create(rec), again[0]

    def refresh(self, fd: int, rec: LeaseRecord) -> int | None:
        os.utime(fd)
        return fd if self._is(fd, self.path) else None

    def release(self, fd: int, rec: LeaseRecord) -> bool:
        with self._serialized():
            return self._is(fd, self.path) and self._remove(os.fstat(fd).st_ino)


def _condition_failed(exc: BaseException) -> bool:
    """A conditional request refused because its condition did not hold (412, 409, 404 for If-Match)."""
    if isinstance(exc, FileExistsError):  # s3fs's translation of a failed If-None-Match
        return True
    resp = getattr(exc.__cause__, "response", None) or {}
    code, status = resp.get("Error", {}).get("Code"), resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (409, 412)


class _S3Store:
    """lease.json on S3, through s3fs's client. A holder's token is the ETag of its last write."""

    def __init__(self, root: StorageRoot, conditional: bool | None):
        if root.protocol not in ("s3", "s3a"):
            raise ValueError(f"storage root {root.url}: a lease needs a local or s3:// root")
        self.fs, self.path = root.fs, root.fs_path(layout.LEASE)
        self.bucket, self.key = self.fs.split_path(self.path)[:2]
        self._caps = None if conditional is None else (conditional, conditional)

    @property
    def caps(self) -> tuple[bool, bool]:
        """(create-only PUT, If-Match) as the store honours them: on a scratch key, a create-only PUT over
        an object and a PUT on a wrong ETag must both be refused."""
        cached = (getattr(self.fs, "_fs_token", id(self.fs)), self.bucket)
        if self._caps is None and cached not in _CAPS:
            key = f"{self.key}.probe-{uuid.uuid4().hex}"
            try:
                self.put(b"probe", key=key)
                _CAPS[cached] = tuple(self._refused(key, **c) for c in ({"create": True}, {"match": '"0"'}))
            finally:
                self.delete(key=key)
        return self._caps or _CAPS[cached]

    def _refused(self, key: str, **cond) -> bool:
        try:
            return self.put(b"probe", key=key, **cond) is None
        except OSError:  # the store rejects the header itself
            return False

    def read(self) -> tuple[LeaseRecord, str] | None:
        async def get():
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            return await resp["Body"].read(), resp["ETag"], resp["LastModified"]

        try:
            data, etag, modified = sync(self.fs.loop, get)
        except FileNotFoundError:
            return None
        return _decode(data, modified), etag

    def _call(self, method: str, key: str | None, **kw) -> dict | None:
        """One request on lease.json (or a scratch key): its response, or None when its condition failed."""
        try:
            return self.fs.call_s3(method, Bucket=self.bucket, Key=key or self.key, **kw)
        except OSError as e:
            if {"IfMatch", "IfNoneMatch"} & kw.keys() and _condition_failed(e):
                return None
            raise
        finally:
            self.fs.invalidate_cache(self.path)

    def put(self, rec: LeaseRecord | bytes, create: bool = False, match: str | None = None,
            key: str | None = None) -> str | None:
        """PUT the lease: its ETag, or None when the condition did not hold."""
        cond = {"IfNoneMatch": "*"} if create else {"IfMatch": match} if match else {}
        body = rec if isinstance(rec, bytes) else _encode(rec)
        return (out := self._call("put_object", key, Body=body, **cond)) and out["ETag"]

    def delete(self, match: str | None = None, key: str | None = None) -> bool:
        return self._call("delete_object", key, **({"IfMatch": match} if match and self.caps[1] else {})) is not None

    def _put_checked(self, rec: LeaseRecord) -> str | None:
        """No conditions: PUT, then read back after a settle; another run's PUT in between wins."""
        self.put(rec)
        time.sleep(_SETTLE_S)
        seen = self.read()
        return seen[1] if seen and seen[0] == rec else None

    def create(self, rec: LeaseRecord) -> str | None:
        return self.put(rec, create=True) if self.caps[0] else None if self.read() else self._put_checked(rec)

    def take(self, seen: tuple[LeaseRecord, str], rec: LeaseRecord) -> tuple[str | None, LeaseRecord | None]:
        etag = (self.put(rec, match=seen[1]) if self.caps[1]
                else self.delete() and self.create(rec) if self.caps[0] else self._put_checked(rec))
        return (etag, seen[0]) if etag else (None, None)

    def refresh(self, etag: str, rec: LeaseRecord) -> str | None:
        if self.caps[1] and (new := self.put(rec, match=etag)) is not None:
            return new
        seen = self.read()  # also tells a loss from a retried PUT whose first try had landed
        if seen is None or not seen[0].same_holder(rec):
            return None
        return seen[1] if seen[0] == rec else self.put(rec)

    def release(self, etag: str, rec: LeaseRecord) -> bool:
        seen = self.read()
        return bool(seen and seen[0].same_holder(rec)) and self.delete(match=seen[1])


class RootLease(AbstractContextManager):
    """A lease this run holds. `notice`: one line when it was taken over from a gone holder, else None;
    `lost`: the LeaseLostError once a heartbeat found the lease taken over. A context manager: releases."""

    def __init__(self, root: StorageRoot, store, record: LeaseRecord, token, notice: str | None):
        self.root, self.record, self.notice, self._store, self._token = root, record, notice, store, token
        self._lock, self._stop, self._thread = threading.Lock(), threading.Event(), None
        self.lost: LeaseLostError | None = None  # and last_error: the last failed background heartbeat
        self.last_error, self.released = None, False

    @classmethod
    def acquire(cls, root: StorageRoot, run_id: str, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                conditional: bool | None = None) -> RootLease:
        """Take the root's lease, or raise LeaseHeldError naming its live holder. `conditional` (S3): None
        probes what the store honours, False forces read-check-write, True assumes both conditions.

        What is left to chance: on S3 without If-Match, two runs that judged the same lease stale can each
        delete and create in turn; with no conditions at all, a run whose read and PUT lie further apart than the
        settle (0.2 s) overwrites one that has already won. Locally without flock (NFS), a taker that moves aside
        a lease another taker has just made puts it back, and a run creating one in that moment wins too. In
        each case the displaced run finds out at its next heartbeat."""
        store = _LocalStore(root) if root.is_local else _S3Store(root, conditional)
        t = datetime.now(timezone.utc)
        mine = LeaseRecord(host=socket.gethostname(), pid=os.getpid(), run_id=run_id, started_at=t,
                           heartbeat_at=t, timeout_s=timeout_s)
        for _ in range(_ATTEMPTS):
            if (token := store.create(mine)) is not None:
                return cls(root, store, mine, token, None)
            if (seen := store.read()) is None:
                continue  # released meanwhile
            if seen[0].same_holder(mine):  # a retried create-only PUT whose first try had landed
                return cls(root, store, mine, seen[1], None)
            if not seen[0].is_stale():
                raise LeaseHeldError(root.url, seen[0])
            token, gone = store.take(seen, mine)
            if token is not None:
                return cls(root, store, mine, token, f"took over the lease of {gone.holder()}, gone since "
                           f"{_when(gone.heartbeat_at)} ({gone.stale_reason() or 'stale'})")
        raise RuntimeError(f"the lease on storage root {root.url} changed hands {_ATTEMPTS} times while this run "
                           f"tried to take it; try again")

    def heartbeat(self) -> None:
        """Refresh heartbeat_at (one small write); raises LeaseLostError once another run holds the root."""
        with self._lock:
            if self.released:
                raise RuntimeError(f"the lease of run {self.record.run_id} was released")
            if self.lost is not None:
                raise self.lost
            rec = self.record.model_copy(update={"heartbeat_at": datetime.now(timezone.utc)})
            if (token := self._store.refresh(self._token, rec)) is None:
                self.lost = LeaseLostError(self.root.url, (self._store.read() or [None])[0])
                raise self.lost
            self.record, self._token = rec, token

    def start_heartbeat(self, interval_s: float | None = None,
                        on_lost: Callable[[LeaseLostError], None] | None = None) -> RootLease:
        """Heartbeat from a daemon thread every interval_s (default: a quarter of the timeout) until release
        or loss (then `on_lost(error)`); a failed write is kept in last_error and tried again next time."""
        def beat():
            while not self._stop.wait(interval_s or self.record.timeout_s / 4):
                try:
                    self.heartbeat()
                except LeaseLostError as e:
                    return on_lost(e) if on_lost else None
                except Exception as e:  # noqa: BLE001 - a transient store error: the next beat tries again
                    self.last_error = e

        self._thread = threading.Thread(target=beat, name=f"lease-{self.record.run_id}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> bool:
        """Stop heartbeating and remove lease.json if it is still this run's; True when removed."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self.released:
                return False
            self.released = True
            try:
                return self._store.release(self._token, self.record)
            finally:
                if self.root.is_local:
                    os.close(self._token)

    def __exit__(self, *exc) -> None:
        self.release()


acquire = RootLease.acquire


def current(root: StorageRoot) -> LeaseRecord | None:
    """The lease as it stands (None when no run holds the root); reads only, takes nothing."""
    seen = (_LocalStore(root) if root.is_local else _S3Store(root, None)).read()
    return seen[0] if seen else None
