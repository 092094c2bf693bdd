"""Where a command's CPU goes, by kind of process: Ray workers, the pytest workers, CLI drivers, Prefect
servers, reference runs, Ray's daemons. It samples every process's CPU time from /proc once a second while
the command runs (processes that start and end between samples are missed, so totals are a floor), and
prints the seconds per kind and the busiest Ray workers. The test suite is bound by CPU on 2 cores, so this
is what says which scenario structure to change.

    .venv/bin/python benchmarks/session_cpu.py [--out FILE] -- .venv/bin/python -m pytest -q -n 3 --dist loadscope --no-loadscope-reorder

A process started during a test is charged to that test's module. The pytest workers' own CPU (tests run in
their process, their threads such as moto's server) is charged by module too when pytest loads this file as
a plugin: `PYTHONPATH=benchmarks` and `-p session_cpu` after `pytest`.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HZ = os.sysconf("SC_CLK_TCK")
# where the plugin's pytest workers append "module CPU-s" lines for the sampler to add up
_MODULE_LOG = "SESSION_CPU_MODULE_LOG"
_KINDS = (  # (kind, what its command line holds), first match wins
    ("cli-driver", ("flows.cli",)),
    ("reference", ("run_in_process",)),
    ("pytest-worker", ("pytest", "xdist", "execnet", "import sys;exec(eval(sys.stdin")),
    ("ray-agent", ("DashboardAgent", "RuntimeEnvAgent")),
    ("ray-worker", ("ray::",)),
    ("raylet", ("raylet",)),
    ("gcs", ("gcs_server",)),
    ("prefect-server", ("prefect server", "uvicorn")),
    ("ray-daemons", ("dashboard", "log_monitor", "monitor.py", "bin/ray start")),
)


def kind(cmd: str) -> str:
    for name, marks in _KINDS:
        if any(m in cmd for m in marks):
            return name
    return "other: " + cmd[:50]


def processes() -> Iterator[tuple[str, list[str], str]]:
    """Each live process: its pid, the fields of /proc/PID/stat after its name (so `[2]` is its process
    group, `[11]` and `[12]` its user and system clock ticks, `[19]` its start time), its command line."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        yield pid, fields, cmd


def started_by(pid: str) -> str:
    """The test module in whose test a process started: pytest sets PYTEST_CURRENT_TEST in its environment for
    each test, and a child inherits it (a process's own later changes do not show in /proc). A pytest worker,
    and the workers of the shared Ray instance the controller started, read as "-"."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "-"
    for var in env:
        if var.startswith(b"PYTEST_CURRENT_TEST="):
            return var.split(b"=", 1)[1].decode(errors="replace").split("::")[0]
    return "-"


def _table(seconds: collections.Counter, rows: int) -> str:
    return "\n".join(f"{v:8.1f}  {k}" for k, v in seconds.most_common(rows))


class Sampler:
    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}  # (pid, start time) -> CPU-s at the last sample
        self.by_kind: collections.Counter = collections.Counter()
        self.cmds: dict[tuple[str, str], str] = {}
        self.by_module: collections.Counter = collections.Counter()
        self.modules: dict[tuple[str, str], str] = {}

    def sample(self, baseline: bool = False) -> None:
        """Add each process's CPU since the last sample (a new process: all of its CPU so far); with
        `baseline`, only remember where every process stands."""
        for pid, fields, cmd in processes():
            key, cpu = (pid, fields[19]), (int(fields[11]) + int(fields[12])) / HZ
            if key not in self.modules:
                self.modules[key] = started_by(pid)
            if not baseline:
                since = cpu - self.seen.get(key, 0.0)
                self.by_kind[kind(cmd)] += since
                self.by_module[self.modules[key]] += since
            self.seen[key], self.cmds[key] = cpu, cmd

    def report(self, wall: float) -> str:
        lines = [_table(self.by_kind, 15)]
        workers = sorted((k for k in self.seen if kind(self.cmds[k]) == "ray-worker"), key=lambda k: -self.seen[k])
        lines += [f"  ray worker {k[0]}: {self.seen[k]:6.1f} CPU-s" for k in workers[:10]]
        lines.append("by the test module that started the process (PYTEST_CURRENT_TEST in its environment):")
        lines.append(_table(self.by_module, 20))
        lines.append(f"{sum(self.by_kind.values()):8.1f}  CPU-s in all over {wall:.0f} s; {len(workers)} Ray worker processes")
        return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """(As a pytest plugin.) This process's CPU over one test, setup and teardown included, charged to its module."""
    t0 = time.process_time()
    yield
    if os.environ.get(_MODULE_LOG):
        with open(os.environ[_MODULE_LOG], "a") as f:
            f.write(f"{item.nodeid.split('::')[0]} {time.process_time() - t0:.3f}\n")


def in_pytest_workers(log: Path) -> collections.Counter:
    by_module: collections.Counter = collections.Counter()
    for line in log.read_text().splitlines():
        module, cpu = line.rsplit(" ", 1)
        by_module[module] += float(cpu)
    return by_module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    sampler, t0 = Sampler(), time.monotonic()
    sampler.sample(baseline=True)  # what ran before the command is not its
    with tempfile.TemporaryDirectory(prefix="session-cpu-") as tmp:
        log = Path(tmp) / "modules.log"
        proc = subprocess.Popen(command, env={**os.environ, _MODULE_LOG: str(log)})
        while proc.poll() is None:
            time.sleep(1)
            sampler.sample()
        text = sampler.report(time.monotonic() - t0)
        if log.exists():
            own = in_pytest_workers(log)
            children = sampler.by_module.copy()
            children["-"] -= sum(own.values())  # charged to modules now
            text += (f"\nthe pytest workers' own CPU by test module (the plugin):\n{_table(own, 25)}"
                     f"\nboth together:\n{_table(own + children, 25)}")
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
