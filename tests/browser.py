"""Headless Chromium as the tests drive it (Debian's `chromium`, which `make test` installs): a page's DOM
after its scripts ran, what its console printed, and a screenshot."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# without the networking flags Chromium's calls home are refused by this machine's closed network
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--window-size=1300,900")


def chromium_path() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is not installed: `make test` installs Debian's chromium (apt-get install chromium)"
    return path


def open_page(url: str, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """The page's DOM once its scripts ran, and its console lines (errors, uncaught exceptions, failed loads)."""
    with tempfile.TemporaryDirectory() as profile:
        action = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        proc = subprocess.run([chromium_path(), *_FLAGS, f"--user-data-dir={profile}", *action, url],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if re.search(r":CONSOLE[:(]|Uncaught|ERR_FILE", line)]
    return proc.stdout, console
