"""A TCP proxy on 127.0.0.1 that a test controls: it forwards to one endpoint until told to go down, then
refuses new connections (nothing listens on its port: the client gets ECONNREFUSED) and resets the open
ones, until told to come back up on the same port. Threads only; plain sockets.

`trigger` (a compiled bytes regex) and `on_trigger` arm an outage at an exact point of the traffic: the first
time the client-to-server stream of any connection matches `trigger` (an HTTP request line, say), the proxy
goes down before forwarding those bytes, so that request never reaches the endpoint, and calls
`on_trigger()` (from the proxy's thread). A match may span two reads of the stream (up to `_TAIL` bytes).
"""
from __future__ import annotations

import re
import socket
import struct
import threading
import time
from typing import Callable

_TAIL = 4096


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a peer that went away, not an orderly FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, trigger: re.Pattern[bytes] | None = None,
                 on_trigger: Callable[[], None] | None = None) -> None:
        self.target = (target_host, target_port)
        self.trigger, self.on_trigger = trigger, on_trigger
        self.port = 0
        self.accepted = 0          # connections forwarded
        self.dropped = 0           # open connections reset by down()
        self.downs: list[float] = []  # monotonic times the proxy went down / came up
        self.ups: list[float] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._up = threading.Event()
        self.triggered = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    # ---------------------------------------------------------------- control

    def start(self) -> "TcpProxy":
        self._listen()
        return self

    def down(self) -> None:
        """Refuse new connections (close the listening socket) and reset every open one."""
        with self._lock:
            if not self._up.is_set():
                return
            self._up.clear()
            self.downs.append(time.monotonic())
            listener, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
        listener.close()  # the accept loop polls with a timeout and exits on the cleared flag
        if self._accept_thread is not threading.current_thread():
            self._accept_thread.join()
        for c in conns:
            _reset(c)
        self.dropped += len(conns) // 2

    def up(self) -> None:
        """Listen again on the same port."""
        if not self._up.is_set():
            self._listen()
            self.ups.append(time.monotonic())

    def stop(self) -> None:
        self.trigger = None
        self.down()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- plumbing

    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        s.settimeout(0.05)
        self.port = s.getsockname()[1]
        with self._lock:
            self._listener = s
            self._up.set()
        self._accept_thread = threading.Thread(target=self._accept, args=(s,), daemon=True, name="proxy-accept")
        self._accept_thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._up.is_set():
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:  # closed by down()
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if not self._up.is_set():
                    _reset(client)
                    _reset(server)
                    return
                self._conns |= {client, server}
                self.accepted += 1
            pair = [client, server, 2]  # the two sockets and the pumps still running between them
            threading.Thread(target=self._pump, args=(client, server, True, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool, pair: list) -> None:
        try:
            self._forward(src, dst, upstream)
        finally:
            with self._lock:
                pair[2] -= 1
                last = pair[2] == 0 and pair[0] in self._conns
                if last:
                    self._conns -= {pair[0], pair[1]}
            if last:
                pair[0].close()
                pair[1].close()

    def _forward(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        tail = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and (trigger := self.trigger) is not None:
                    seen = tail + data
                    tail = seen[-_TAIL:]
                    if trigger.search(seen):
                        self._fire()
                        return
                dst.sendall(data)
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        except OSError:  # reset by down(), or by a peer
            pass

    def _fire(self) -> None:
        with self._lock:
            if self.trigger is None:
                return
            self.trigger = None
        self.down()
        self.triggered.set()
        if self.on_trigger is not None:
            self.on_trigger()
