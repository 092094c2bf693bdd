"""How a run behaves when it is stopped: start `scopeflow run` on a fresh root, send SIGTERM (or SIGINT) once a
unit of the chosen stage is running, and report the seconds to exit, the exit code, the ledger's records by
status, and whether any process of that run is left; then resume and report the resumed run's time.

    .venv/bin/python benchmarks/interrupt.py [--config configs/tiny.yaml] [--stage train] [--signal TERM]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from storage.ledger import Ledger
from storage.root import StorageRoot
from tasks.registry import STAGE_NAMES

REPO = Path(__file__).resolve().parents[1]


def _records(root: StorageRoot) -> list:
    ledger = Ledger(root)
    return [r for s in STAGE_NAMES for r in ledger.records(s)]


def _left_over(marker: str) -> list[str]:
    """Processes whose command line names this run's own folder (its Prefect server, its Ray session)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line.strip() for line in out if marker in line and "benchmarks/interrupt.py" not in line]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--stage", default="train", help="send the signal once a unit of this stage is running")
    p.add_argument("--signal", default="TERM", choices=["TERM", "INT"])
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sf-interrupt-"))
    cfg = yaml.safe_load((REPO / args.config).read_text())
    if "extends" in cfg:  # the copy lives elsewhere: its parent by absolute path
        cfg["extends"] = str((REPO / args.config).parent / cfg["extends"])
    cfg["storage"]["root"] = str(work / "run")
    cfg.setdefault("orchestration", {})["prefect_home"] = str(work / "prefect")
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "RAY_TMPDIR": str(work / "ray")}
    env.pop("PREFECT_API_URL", None)  # the run starts (and must stop) a Prefect server of its own
    root = StorageRoot(str(work / "run"))
    cmd = [sys.executable, "-m", "flows.cli", "run", str(config)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and time.monotonic() - t0 < args.timeout:
        if any(r.stage == args.stage and r.status == "running" for r in _records(root)):
            break
        time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(getattr(signal, f"SIG{args.signal}"))
    _, err = proc.communicate(timeout=120)
    exit_s = time.monotonic() - sent
    time.sleep(1)
    statuses = Counter(r.status for r in _records(root))
    left = _left_over(str(work))
    t1 = time.monotonic()
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    out = {"signal": args.signal, "sent_after_s": round(sent - t0, 1), "exit_s": round(exit_s, 2),
           "exit_code": proc.returncode, "last_line": err.strip().splitlines()[-1] if err.strip() else "",
           "records": dict(statuses), "processes_left": left,
           "resume": {"exit_code": resumed.returncode, "wall_s": round(time.monotonic() - t1, 1),
                      "records": dict(Counter(r.status for r in _records(root)))},
           "root": str(work / "run")}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
