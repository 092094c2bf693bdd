"""One Prefect server for a run, so every Ray worker reports to it.

Without a running server each worker starts a temporary server of its own and SQLite reports "database is
locked" (docs/architecture.md, "Pitfalls of this stack"). This module never imports prefect: Prefect reads PREFECT_API_URL when it is
imported, so the server must be up and the variable set before that.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from infra.processes import stop_process_group

QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(api_url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"Prefect server exited with code {proc.returncode} during start-up:\n{tail}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"Prefect server at {api_url} not healthy after {timeout:.0f} s (log: {log})")


def server_env(home: Path, api_url: str) -> dict[str, str]:
    return {**QUIET_ENV, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url,
            # without this the dashboard on a port other than 4200 says it cannot reach the API
            "PREFECT_SERVER_UI_API_URL": api_url}


def launch_server(home: Path, port: int | None = None, host: str = "127.0.0.1") -> tuple[subprocess.Popen, str]:
    """Start the server and return at once (it is healthy ~10 s later: `wait_healthy`)."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_url = f"http://{host}:{port}/api"
    env = {**os.environ, **server_env(home, api_url)}
    with open(home / "server.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, api_url


def start_server(home: Path, port: int | None = None, host: str = "127.0.0.1") -> tuple[subprocess.Popen, str]:
    proc, api_url = launch_server(home, port, host)
    try:
        wait_healthy(api_url, timeout=120, proc=proc, log=home / "server.log")
    except BaseException:
        stop_server(proc)
        raise
    return proc, api_url


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server by its own process group (launch_server starts it in a session of its own)."""
    stop_process_group(proc)


@contextlib.contextmanager
def prefect_api(home: Path, while_starting: Callable[[], None] | None = None) -> Iterator[str]:
    """PREFECT_API_URL when set (a shared server or Prefect Cloud); otherwise a local server for the
    duration of the block, its URL exported for this process and the Ray workers it starts.
    `while_starting` runs once the URL is exported, before the server is up (~10 s of waiting otherwise)."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        if while_starting is not None:
            while_starting()
        yield existing
        return
    proc, api_url = launch_server(home)
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_SERVER_UI_API_URL", "PREFECT_HOME")}
    os.environ.update(server_env(home, api_url))
    try:
        if while_starting is not None:
            while_starting()
        wait_healthy(api_url, timeout=120, proc=proc, log=home / "server.log")
        yield api_url
    finally:
        stop_server(proc)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
