"""What a Prefect server costs the tests to start and to keep idle, with settings given as NAME=VALUE
arguments (e.g. PREFECT_SERVER_UI_ENABLED=false): CPU-s of the server and its children until healthy, then
over `--idle` seconds with nothing asking it anything.

    PYTHONPATH=. .venv/bin/python benchmarks/prefect_server_idle.py [--idle 60] [NAME=VALUE ...]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import psutil

from infra.prefect_server import launch_server, stop_server, wait_healthy


def cpu_s(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("settings", nargs="*", help="NAME=VALUE environment settings of the server")
    args = ap.parse_args()
    os.environ.update(s.split("=", 1) for s in args.settings)
    t0 = time.monotonic()
    proc, url = launch_server(Path(tempfile.mkdtemp(prefix="sf-prefect-idle-")))
    try:
        wait_healthy(url, 180, proc)
        server = psutil.Process(proc.pid)
        started = cpu_s(server)
        print(f"start: {time.monotonic() - t0:.1f} s, {started:.1f} CPU-s")
        time.sleep(args.idle)
        print(f"idle {args.idle:.0f} s: {cpu_s(server) - started:.2f} CPU-s")
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
