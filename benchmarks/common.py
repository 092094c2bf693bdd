"""Small helpers the benchmark scripts share (no torch here: some parents stay light and leave torch to
their child processes). Imported as `common`: a script's own folder is first on sys.path."""
from __future__ import annotations

import json
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def write_json(path: str | Path, obj, indent: int = 1, **dumps) -> Path:
    """`obj` as JSON (and a final newline) at `path`, making its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, **dumps) + "\n")
    return path
