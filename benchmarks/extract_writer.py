"""How many bytes per second an extract unit's writer absorbs with no forward pass competing: the ceiling that
storage puts on extraction speed (a GPU's forward pass at Gemma scale produces hundreds of MB/s per unit;
`benchmarks/extract.py` measures the overlap with a real forward pass).

It runs the extract stage's own writer code (`tasks.stages.extract.create_outputs`, `append_rows`, then each
`RowWriter.close`) on synthetic bf16 rows for G (site, layer) groups of width d, batch after batch, into a
fresh run root each time, and reports stored MB/s (x and index), the process's CPU seconds per MB, and the
tokens/s that rate sustains for that layout. Best of the rounds.

    .venv/bin/python benchmarks/extract_writer.py                            # a Gemma 2 2B wave: 6 x d 2304
    .venv/bin/python benchmarks/extract_writer.py --root /dev/shm            # the same into memory
    .venv/bin/python benchmarks/extract_writer.py --threads 2                # arrays written side by side
    .venv/bin/python benchmarks/extract_writer.py --groups 12 --width 64 --chunk-rows 4096 --shard-chunks 2 \
        --batch-rows 4096                                                    # the tiny suite's layout

Each run adds its row to the results file (replacing one of the same layout and root).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import REPO, write_json
from flows.config import SuiteConfig
from storage.root import StorageRoot
from tasks.stages.extract import append_rows, create_outputs


def write_unit(cfg: SuiteConfig, root: StorageRoot, keys: list, width: int, rows: int, batch_rows: int,
               threads: int = 1) -> tuple[float, float]:
    """Wall and process CPU seconds to write one unit of `rows` rows per group. `threads` > 1 tries a design
    the stage does not use: the groups' arrays written by that many threads side by side."""
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 1 << 16, size=(batch_rows, width), dtype=np.uint16)
    index = np.zeros((batch_rows, 2), np.int32)
    writers: dict = {}
    t0, c0 = time.perf_counter(), os.times()
    create_outputs(cfg, root, 0, keys, {"res": width}, rows, writers)
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, rows, batch_rows):
            n = min(batch_rows, rows - start)
            if threads == 1:
                append_rows(writers, {k: batch[:n] for k in keys}, index[:n])
            else:
                list(pool.map(lambda k: append_rows({k: writers[k]}, {k: batch[:n]}, index[:n]), keys))
        list(pool.map(lambda w: w.close(), [w for pair in writers.values() for w in pair]))
    c1 = os.times()
    return time.perf_counter() - t0, (c1.user - c0.user) + (c1.system - c0.system)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=6, help="(site, layer) groups written by the unit")
    p.add_argument("--width", type=int, default=2304)
    p.add_argument("--rows", type=int, default=131_072, help="rows per group in the unit")
    p.add_argument("--batch-rows", type=int, default=16_384, help="rows per forward batch (16 x 1024 tokens)")
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--shard-chunks", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="writer threads (the stage uses 1; see write_unit)")
    p.add_argument("--root", default="", help="where run roots are made (default: the system's temporary folder)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/extract-writer-cpu.json"))
    args = p.parse_args()

    keys = [("res", layer) for layer in range(args.groups)]
    stored = args.groups * args.rows * (args.width * 2 + 8)
    runs = []
    for _ in range(args.repeats):
        tmp = tempfile.mkdtemp(dir=args.root or None)
        try:
            cfg = SuiteConfig.model_validate({"storage": {"root": tmp, "activation_dtype": "bfloat16",
                                                          "chunk_rows": args.chunk_rows,
                                                          "shard_chunks": args.shard_chunks}})
            runs.append(write_unit(cfg, StorageRoot(tmp), keys, args.width, args.rows, args.batch_rows,
                                   args.threads))
        finally:
            shutil.rmtree(tmp)
    wall, cpu = min(runs)
    r = {"groups": args.groups, "width": args.width, "rows": args.rows, "batch_rows": args.batch_rows,
         "chunk_rows": args.chunk_rows, "shard_chunks": args.shard_chunks, "threads": args.threads,
         "root": args.root or tempfile.gettempdir(),
         "bytes": stored, "wall_s": wall, "cpu_s": cpu, "walls_s": [w for w, _ in runs],
         "mb_per_s": stored / wall / 1e6, "cpu_ms_per_mb": cpu / (stored / 1e6) * 1e3,
         "tokens_per_s": args.rows / wall}
    print(f"{args.groups} groups x d {args.width} into {r['root']}, {args.threads} thread(s) | "
          f"{stored / 1e6:,.0f} MB in {wall:.2f} s = "
          f"{r['mb_per_s']:,.0f} MB/s | CPU {cpu:.2f} s ({r['cpu_ms_per_mb']:.1f} ms/MB) | "
          f"sustains {r['tokens_per_s']:,.0f} tokens/s for this layout", flush=True)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else []
    same = ("groups", "width", "shard_chunks", "root", "threads")
    kept = [p for p in previous if any(p.get(k) != r[k] for k in same)]
    write_json(out, kept + [r])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
