"""How many bytes per second an extract unit's writing absorbs with no forward pass competing, against the
number of writers (`extract.writers`): the ceiling that storage puts on extraction speed (a GPU's forward
pass at Gemma scale produces GB/s per unit; `benchmarks/extract.py` measures the overlap with a real one).

It runs the extract stage's own writing (`storage.activation_writer.ShardWriter`: the writer thread, and with
N > 1 writers N processes that each own their share of the zarr shards) on synthetic bf16 rows for G
(site, layer) groups of width d, batch after batch, into a fresh run root each time, and reports stored GB/s
(x and index), CPU seconds per GB (this process and its writers), and the tokens/s that rate sustains for
that layout. Each round times every writer count once, in turn, so a ratio against 1 writer compares
figures from the same minutes (this machine's speed drifts 1.5x between runs); the table is the best round
per count.

    .venv/bin/python benchmarks/extract_writer.py --writers 1,2,4              # a Gemma 2 2B wave: 6 x d 2304
    .venv/bin/python benchmarks/extract_writer.py --writers 1,2,4 --root /dev/shm   # the same into memory
    python benchmarks/extract_writer.py --writers 1,2,4,8,16 --root /dev/shm \
        --out benchmarks/results/extract-writers-gpu-node.json                  # a 16-core GPU node
    .venv/bin/python benchmarks/extract_writer.py --groups 12 --width 64 --chunk-rows 4096 --shard-chunks 4 \
        --batch-rows 4096 --rows 65536                                         # the tiny suite's layout

It imports numpy, zarr, torch and the project's `storage` package only (no Ray, Prefect or transformers), so
a GPU machine needs zarr's wheels and nothing else of the project's dependencies. `sweep()` is the entry point
for another script.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

from common import REPO, cpu_name, write_json

sys.path.insert(0, str(REPO))  # this checkout's storage/
from storage.activation_writer import ShardWriter  # noqa: E402
from storage.config import StorageConfig  # noqa: E402
from storage.root import StorageRoot  # noqa: E402


def write_unit(storage: StorageConfig, root: StorageRoot, keys: list, width: int, rows: int, batch_rows: int,
               writers: int) -> tuple[float, float, float, float]:
    """Wall and CPU seconds (this process and its writer processes), the writers' kernel seconds, and the
    largest writer's peak RSS in MB, to write one unit of `rows` rows per group, from starting the writers
    to the last object closed."""
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 1 << 16, size=(batch_rows, width), dtype=np.uint16)
    index = np.zeros((batch_rows, 2), np.int32)
    t0, c0 = time.perf_counter(), os.times()
    with ShardWriter(storage, "synthetic", root, 0, keys, {"res": width}, rows, writers,
                     max_batch_rows=batch_rows) as out:
        for start in range(0, rows, batch_rows):
            n = min(batch_rows, rows - start)
            out.append({k: batch[:n] for k in keys}, index[:n])
    wall, c1 = time.perf_counter() - t0, os.times()
    stats = out.pool.writer_stats.values() if out.pool else []
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + sum(s[0] for s in stats)
    return wall, cpu, sum(s[1] for s in stats), max((s[2] / 1024 for s in stats), default=0.0)


def sweep(writers: list[int], groups: int = 6, width: int = 2304, rows: int = 131_072, batch_rows: int = 16_384,
          chunk_rows: int = 4096, shard_chunks: int = 16, repeats: int = 3, root: str = "") -> list[dict]:
    """One result per writer count: best of `repeats` rounds, each round timing every count in turn."""
    keys = [("res", layer) for layer in range(groups)]
    stored = groups * rows * (width * 2 + 8)
    storage = StorageConfig(root=root or tempfile.gettempdir(), activation_dtype="bfloat16", chunk_rows=chunk_rows,
                            shard_chunks=shard_chunks)
    # start the writer processes' server (and its imports) once, outside the timings: a Ray worker keeps it
    warm = tempfile.mkdtemp(dir=root or None)
    write_unit(storage, StorageRoot(warm), keys[:1], 8, 64, 64, max(2, *writers))
    shutil.rmtree(warm)
    runs: dict[int, list[tuple[float, float, float, float]]] = {n: [] for n in writers}
    for _ in range(repeats):
        for n in writers:
            tmp = tempfile.mkdtemp(dir=root or None)
            try:
                runs[n].append(write_unit(storage, StorageRoot(tmp), keys, width, rows, batch_rows, n))
            finally:
                shutil.rmtree(tmp)
            wall, cpu, _, _ = runs[n][-1]
            print(f"  {n:>2} writer(s): {stored / wall / 1e9:.3f} GB/s ({wall:.2f} s, CPU {cpu:.2f} s)", flush=True)
    results = []
    for n in writers:
        wall, cpu, writer_sys, writer_rss = min(runs[n])
        results.append({"writers": n, "groups": groups, "width": width, "rows": rows, "batch_rows": batch_rows,
                        "chunk_rows": chunk_rows, "shard_chunks": shard_chunks,
                        "root": root or tempfile.gettempdir(), "bytes": stored, "wall_s": wall, "cpu_s": cpu,
                        "walls_s": [r[0] for r in runs[n]], "gb_per_s": stored / wall / 1e9,
                        "cpu_s_per_gb": cpu / (stored / 1e9), "tokens_per_s": rows / wall,
                        "writers_kernel_s": writer_sys, "largest_writer_rss_mb": writer_rss})
    base = next((r for r in results if r["writers"] == 1), None)
    for r in results:
        r["vs_1_writer"] = r["gb_per_s"] / base["gb_per_s"] if base else None
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writers", default="1,2,4", help="comma-separated writer counts (1: the unit's own thread)")
    p.add_argument("--groups", type=int, default=6, help="(site, layer) groups written by the unit")
    p.add_argument("--width", type=int, default=2304)
    p.add_argument("--rows", type=int, default=131_072, help="rows per group in the unit")
    p.add_argument("--batch-rows", type=int, default=16_384, help="rows per forward batch (16 x 1024 tokens)")
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--shard-chunks", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--root", default="", help="where run roots are made (default: the system's temporary folder)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/extract-writers-cpu.json"))
    args = p.parse_args()

    writers = [int(n) for n in args.writers.split(",")]
    t0 = time.time()
    results = sweep(writers, args.groups, args.width, args.rows, args.batch_rows, args.chunk_rows, args.shard_chunks,
                    args.repeats, args.root)
    for r in results:
        ratio = f" = {r['vs_1_writer']:.2f}x 1 writer" if r["vs_1_writer"] else ""
        print(f"{r['writers']:>2} writer(s), {args.groups} groups x d {args.width} into {r['root']}: "
              f"{r['gb_per_s']:.3f} GB/s{ratio} | CPU {r['cpu_s_per_gb']:.2f} s/GB | "
              f"sustains {r['tokens_per_s']:,.0f} tokens/s for this layout", flush=True)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "seconds": time.time() - t0,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "load_average_at_end": os.getloadavg()}
    write_json(args.out, {"machine": machine, "command": " ".join(sys.argv), "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
