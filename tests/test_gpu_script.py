"""benchmarks/gpu.sh, the prepared run for a lent GPU machine: it runs only there, so what CI can check is that
without a GPU it stops at once with one clear line instead of hanging or half-running, and that every Python
entry point it calls imports without Ray or Prefect (which cannot travel to that machine) or SAELens."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.sh"
# what gpu.sh runs, and what benchmarks/extract.py's child process imports inside its function
ENTRY_MODULES = ["train", "extract", "extract_writer", "evaluate", "gpu_report", "random_model",
                 "flows.config", "storage.root", "storage.layout", "tasks.stages.extract", "tasks.lm.model",
                 "tasks.stages.tokenize", "tasks.capacity"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run for minutes")
def test_without_a_gpu_it_stops_at_once_with_one_line(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_SH_NO_INSTALL": "1"}
    done = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stdout.strip().splitlines()
    assert lines == ["gpu.sh: no CUDA device (torch.cuda.is_available() is False): run this on the lent GPU "
                     "machine"], done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.log"]


def test_its_files_fit_what_comes_back():
    """At most 8 files come back from $OUT, flat; the plan reads extract-cuda.json and train-cuda.json."""
    text = SCRIPT.read_text()
    names = set(re.findall(r'"\$OUT/([A-Za-z0-9._-]+)"', text)) | {"gpu.log"}
    assert {"extract-cuda.json", "train-cuda.json"} <= names and len(names) <= 8, names
    for script in set(re.findall(r"benchmarks/(\w+\.py)", text)):
        assert (REPO / "benchmarks" / script).is_file(), script


def test_entry_points_import_without_ray_or_prefect():
    code = ("import importlib, sys\n"
            f"for m in {ENTRY_MODULES!r}: importlib.import_module(m)\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('ray', 'prefect', 'prefect_ray', 'sae_lens'))\n"
            "assert not bad, bad\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
