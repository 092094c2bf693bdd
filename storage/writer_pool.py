"""Writer processes that share one unit's writes, each the only writer of its own storage objects.

zarr-python routes every store write of a process through one event-loop thread (zarr.core.sync), so one
process stores a few hundred MB/s however many threads feed it. A `WriterPool` spreads an output's storage
objects (zarr shards, else chunks) over N processes: an object's rows go to one owner, which buffers them
and writes the object whole, once, exactly as `storage.arrays.RowWriter` would, so the stored bytes do not
depend on N. Rows travel through a few shared-memory slots (one batch of every array each), so memory stays
bounded: `append` waits for a free slot. A writer's exception, or a writer that dies, fails the caller's next
`append` or `close` with the writer's traceback; nothing waits forever on a dead process.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import resource
import sys
import traceback
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import zarr

from storage.arrays import open_for_writing, write_rows_unit
from storage.root import StorageRoot

_ALIGN = 64
_POLL_S = 0.5  # how often a wait on the writers checks that they are alive


@dataclass(frozen=True)
class PoolArray:
    """An array the pool writes: created already (at final size) at `path` under the root."""

    path: str
    n_rows: int
    unit_rows: int  # rows of one storage object (storage.arrays.write_rows_unit)

    @classmethod
    def of(cls, path: str, array: zarr.Array) -> "PoolArray":
        return cls(path, array.shape[0], write_rows_unit(array))

    def n_objects(self) -> int:
        return -(-self.n_rows // self.unit_rows)

    def object_rows(self, j: int) -> int:
        return min(self.unit_rows, self.n_rows - j * self.unit_rows)


def assign_owners(arrays: dict[str, PoolArray], row_bytes: dict[str, int], n: int) -> dict[tuple[str, int], int]:
    """(array, object) -> writer: objects in the order rows fill them (object j of every array, then j + 1),
    each to the writer with the fewest bytes so far (ties: the lowest id), so the objects completed at about
    the same time land on different writers."""
    load = [0] * n
    owner = {}
    for j in range(max((a.n_objects() for a in arrays.values()), default=0)):
        for name, a in arrays.items():
            if j < a.n_objects():
                w = min(range(n), key=lambda i: (load[i], i))
                owner[(name, j)] = w
                load[w] += a.object_rows(j) * row_bytes[name]
    return owner


def _forkserver_context():
    """Writers are forked from a small server process started once per caller (no fork of a process that
    holds CUDA, threads or a model; no fresh interpreter per writer). Python 3.11's server ignores the
    caller's sys.path, so it starts with that path as its PYTHONPATH: its children import the modules the
    caller imports (this checkout's, not an installed copy)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return ctx


class WriterPool:
    """`n` writer processes, started at construction (they start while the caller loads its model); then
    `open` once the arrays exist, `append` rows batch by batch, and `close` (returns once every object is
    written and every writer exited) or `abort`."""

    def __init__(self, root: StorageRoot, n: int, slot_bytes: int, depth: int = 2):
        ctx = _forkserver_context()
        self.slot_bytes = slot_bytes
        self.slots = [SharedMemory(create=True, size=max(1, slot_bytes)) for _ in range(depth)]
        self.free = list(range(depth))
        self.refs = [0] * depth
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=_writer_main, name=f"extract-writer-{i}", daemon=True,
                                  args=(i, root, [s.name for s in self.slots], self.inboxes[i], self.outbox,
                                        os.getpid()))
                      for i in range(n)]
        self.done: set[int] = set()
        self.writer_stats: dict[int, tuple[float, float, int]] = {}
        self.arrays: dict[str, PoolArray] = {}
        self.offset: dict[str, int] = {}
        self.owner: dict[tuple[str, int], int] = {}
        self._closed = False
        try:
            for p in self.procs:
                p.start()
        except BaseException:
            self.abort()
            raise

    def open(self, arrays: dict[str, PoolArray], row_bytes: dict[str, int]) -> None:
        self.arrays, self.offset = dict(arrays), {name: 0 for name in arrays}
        self.owner = assign_owners(self.arrays, row_bytes, len(self.procs))
        for w, inbox in enumerate(self.inboxes):
            owned = [key for key, o in self.owner.items() if o == w]
            inbox.put(("open", {name: self.arrays[name] for name in {k[0] for k in owned}}, owned))

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Rows for any of the arrays, continuing where each one's last rows ended; copied into a slot, so
        the caller may reuse its arrays at once."""
        self._drain()
        total = sum(-(-data.nbytes // _ALIGN) * _ALIGN for data in rows.values())
        if total > self.slot_bytes:
            raise ValueError(f"writer pool: a batch of {total} bytes exceeds its slots of {self.slot_bytes}")
        slot = self._free_slot()
        buf, at, pieces = self.slots[slot].buf, 0, {}
        for name, data in rows.items():
            a, start, n = self.arrays[name], self.offset[name], len(data)
            if start + n > a.n_rows:
                raise ValueError(f"{a.path}: {start + n} rows written into an array of {a.n_rows} rows")
            np.ndarray(data.shape, data.dtype, buffer=buf, offset=at)[...] = data
            row = data.nbytes // n if n else 0
            r = start
            while r < start + n:
                j = r // a.unit_rows
                stop = min(start + n, (j + 1) * a.unit_rows)
                piece = (name, j, r - j * a.unit_rows, stop - r, at + (r - start) * row, data.shape[1:], data.dtype.str)
                pieces.setdefault(self.owner[(name, j)], []).append(piece)
                r = stop
            self.offset[name] = start + n
            at += -(-data.nbytes // _ALIGN) * _ALIGN
        if not pieces:
            self.free.append(slot)
            return
        self.refs[slot] = len(pieces)
        for w, ps in pieces.items():
            self.inboxes[w].put(("rows", slot, ps))

    def close(self) -> None:
        """Wait until every writer has written all its objects and exited; raises what a writer raised."""
        try:
            for name, a in self.arrays.items():
                if self.offset[name] != a.n_rows:
                    raise ValueError(f"{a.path}: wrote {self.offset[name]} rows, expected {a.n_rows}")
            for inbox in self.inboxes:
                inbox.put(("close",))
            while len(self.done) < len(self.procs):
                self._wait()
            for p in self.procs:
                p.join()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop the writers (killed if they still run) and free the slots; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        for p in self.procs:
            if p.is_alive():
                p.kill()
            if p.pid is not None:
                p.join()
        for q in (self.outbox, *self.inboxes):
            q.cancel_join_thread()
            q.close()
        for s in self.slots:
            s.close()
            s.unlink()

    def _free_slot(self) -> int:
        while not self.free:
            self._wait()
        return self.free.pop()

    def _drain(self) -> None:
        while True:
            try:
                msg = self.outbox.get_nowait()
            except queue.Empty:
                return
            self._handle(msg)

    def _wait(self) -> None:
        try:
            self._handle(self.outbox.get(timeout=_POLL_S))
        except queue.Empty:
            dead = [(i, p) for i, p in enumerate(self.procs) if i not in self.done and p.exitcode is not None]
            if dead:
                self._drain()  # its last word may have arrived since
                i, p = dead[0]
                raise RuntimeError(f"extract writer process {i} (pid {p.pid}) exited with code {p.exitcode} "
                                   f"before writing its storage objects")

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ack":
            slot = msg[1]
            self.refs[slot] -= 1
            if self.refs[slot] == 0:
                self.free.append(slot)
        elif kind == "done":  # with the writer's CPU seconds, of them in the kernel, and peak RSS (KiB)
            self.done.add(msg[1])
            self.writer_stats[msg[1]] = msg[2:]
        else:  # "error"
            _, w, error, where, tb = msg
            what = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
            failure = RuntimeError(f"extract writer process {w} failed while writing {where}: {what}")
            failure.add_note(f"the writer's traceback:\n{tb}")
            raise failure from (error if isinstance(error, BaseException) else None)


def _caller_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _writer_main(wid: int, root: StorageRoot, slot_names: list[str], inbox, outbox, caller: int) -> None:
    """One writer: buffers the rows of the objects it owns and writes each object whole once complete.
    It exits if its caller dies (a killed Ray worker) instead of waiting for rows forever."""
    slots, current = [], "its shared-memory slots"
    try:
        slots = [SharedMemory(name=name) for name in slot_names]  # forkserver children share the caller's
        # resource tracker: attaching registers nothing new, and only the caller unlinks
        arrays: dict[str, tuple[zarr.Array, PoolArray]] = {}
        pending: set[tuple[str, int]] = set()
        buffers: dict[tuple[str, int], list] = {}
        while True:
            try:
                msg = inbox.get(timeout=5)
            except queue.Empty:
                if not _caller_alive(caller):
                    return
                continue
            if msg[0] == "open":
                for name, a in msg[1].items():
                    current = a.path
                    arrays[name] = (open_for_writing(root.zarr_store(a.path)), a)
                pending.update(msg[2])
            elif msg[0] == "rows":
                complete = []
                for name, j, at, n, offset, row_shape, dtype in msg[2]:
                    a = arrays[name][1]
                    buf = buffers.setdefault((name, j), [np.empty((a.object_rows(j), *row_shape), dtype), 0])
                    buf[0][at:at + n] = np.ndarray((n, *row_shape), dtype, buffer=slots[msg[1]].buf, offset=offset)
                    buf[1] += n
                    if buf[1] == a.object_rows(j):
                        complete.append((name, j))
                outbox.put(("ack", msg[1]))  # copied out: the slot is free for the next batch
                for name, j in complete:
                    array, a = arrays[name]
                    current = f"{a.path} (storage object {j})"
                    array[j * a.unit_rows:j * a.unit_rows + a.object_rows(j)] = buffers.pop((name, j))[0]
                    pending.discard((name, j))
            else:  # "close"
                if pending:
                    name, j = min(pending)
                    raise ValueError(f"{arrays[name][1].path}: storage object {j} of {len(pending)} unwritten "
                                     f"objects never received all its rows")
                t, peak = os.times(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                outbox.put(("done", wid, t.user + t.system, t.system, peak))
                return
    except BaseException as e:
        tb = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(e))  # the queue pickles in a thread of its own, where a failure is lost
            outbox.put(("error", wid, e, current, tb))
        except Exception:
            outbox.put(("error", wid, f"{type(e).__name__}: {e}", current, tb))
    finally:
        for s in slots:
            s.close()
