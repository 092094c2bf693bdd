"""Shuffle-stage throughput against a plain sequential copy of the same bytes on the same storage, and the
shuffle's peak memory at two bucket sizes and two data sizes (the issue's goals: at least 0.5 of the copy's
rate, memory bounded by the bucket size).

Why a copy: the shuffle reads every activation row once and writes it once, so the storage's copy speed is
the most it could reach; what it loses beyond that is its own work (permuting, converting, statistics).
Two references, timed in the same run on the same storage root:

- zarr copy: each extract shard's `x` and `index` read in order, one storage object (zarr shard, else chunk)
  at a time, and written to new arrays made by the project's create_array with the same shape, dtype,
  chunks, sharding and codecs (the least a zarr-to-zarr stage can do; `ratio` is against this);
- file copy: `shutil.copytree` of the activations folder (bytes only, nothing decoded or checksummed).

For each data size the parent writes extract-layout shards (`activations/{site}/layer_{L}/shard_{s:05d}`,
`x [rows, d]` in the activation dtype and `index [rows, 2] int32`, seeded random rows, through create_array
and RowWriter as tasks/extract.py does) into a temporary root, then runs each measurement in its own child
process, so each reports its own peak RSS. Every timing is repeated, the rounds interleaved, and the best
kept. The page cache is dropped before every timing when this process may (root); otherwise every timing
reads a warm cache alike (the JSON says which). Rate = logical bytes moved (x + index) / seconds; "+sync"
adds the os.sync() that makes the written bytes durable.

Memory: the shuffle rounds `shuffle.bucket_rows` up to whole storage objects of its output (sae.batch_size x
storage.shard_chunks rows), so the table shows the bucket asked for, the bucket used and its bytes, next to
the peak RSS. A data size needs at least `shuffle.workers` buckets for every worker to hold one at once.
`--phases` adds a one-bucket-at-a-time replica of the stage's steps with wall/user/sys time and page faults.

    .venv/bin/python benchmarks/shuffle.py                          # ~6 min on 2 cores
    .venv/bin/python benchmarks/shuffle.py --sizes 262144 --buckets 65536 --repeats 1 --phases
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cpu_name, folder_bytes, write_json

SITE, LAYER = "res", 0
ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4}


# ---------------------------------------------------------------- helpers shared by parent and children

def _config(args: argparse.Namespace, tmp: str, bucket: int = 1):
    """Only the fields the benchmark sets; everything else keeps the project's defaults."""
    from tasks.config import StagesConfig

    storage = {"root": tmp, "activation_dtype": args.dtype}
    if args.chunk_rows:
        storage["chunk_rows"] = args.chunk_rows
    if args.shard_chunks:
        storage["shard_chunks"] = args.shard_chunks
    raw = {"seed": args.seed, "storage": storage, "shuffle": {"bucket_rows": bucket, "workers": args.workers}}
    if args.batch_size:
        raw["sae"] = {"batch_size": args.batch_size}
    return StagesConfig.model_validate(raw)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that across exec, so a child would report
    the parent's RSS as its own floor."""
    return _status_mb("VmHWM")


def _shard_rows(rows: int, shard_rows: int) -> list[int]:
    return [min(shard_rows, rows - s) for s in range(0, rows, shard_rows)]


def _drop_caches() -> bool:
    """Write back dirty pages and drop the page cache (root only); False when not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _timed(work) -> dict:
    """Wall time of work(), and of work() plus the os.sync() that makes its writes durable."""
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    extra = work() or {}
    t1 = time.perf_counter()
    os.sync()
    t2 = time.perf_counter()
    return {"s": t1 - t0, "s_synced": t2 - t0, "rss_before_mb": rss_before, "peak_rss_mb": _peak_rss_mb(), **extra}


# ---------------------------------------------------------------- children: one measurement each

def _build(args: argparse.Namespace) -> dict:
    """Shards laid out exactly as tasks/extract.py writes them (create_array + RowWriter)."""
    import numpy as np
    import torch
    import zarr

    from storage.arrays import RowWriter, create_array
    from storage.root import StorageRoot
    from storage.layout import activation_shard

    cfg, root = _config(args, args.root), StorageRoot(args.root)
    gen = torch.Generator().manual_seed(args.seed)
    chunk, per_shard, start = cfg.storage.chunk_rows, cfg.storage.shard_chunks, 0
    shards = _shard_rows(args.size, args.shard_rows)
    for s, n in enumerate(shards):
        group = activation_shard(SITE, LAYER, s)
        store = root.zarr_store(group)
        zarr.open_group(store=store, mode="w", attributes={"site": SITE, "layer": LAYER, "shard": s})
        x = create_array(store, "x", (n, args.d), args.dtype, (chunk, args.d), shard_chunks=per_shard)
        xw = RowWriter(x, f"{group}/x")
        iw = RowWriter(create_array(store, "index", (n, 2), "int32", (chunk, 2), shard_chunks=per_shard),
                       f"{group}/index")
        for lo in range(0, n, chunk):
            rows = min(chunk, n - lo)
            xw.append(torch.randn(rows, args.d, generator=gen))
            g = np.arange(start + lo, start + lo + rows)
            iw.append(np.stack([g // args.ctx, g % args.ctx], axis=1).astype(np.int32))
        xw.close()
        iw.close()
        start += n
    return {"shards": len(shards), "rows": start}


def _zarr_copy(args: argparse.Namespace) -> dict:
    """Every shard's arrays, in order, one storage object (zarr shard, else chunk) at a time, into new arrays made
    by the project's create_array with the source's shape, dtype, chunks and sharding (so the same codecs)."""
    import zarr

    from storage.arrays import create_array, logical_dtype, write_rows_unit
    from storage.root import StorageRoot
    from storage.layout import activation_shard

    root = StorageRoot(args.root)
    srcs = []
    for s in range(len(_shard_rows(args.size, args.shard_rows))):
        group = zarr.open_group(store=root.zarr_store(activation_shard(SITE, LAYER, s), read_only=True), mode="r")
        srcs += [(group[name], root.zarr_store(f"copy_zarr/shard_{s:05d}"), name) for name in ("x", "index")]
    same_layout = []

    def work():
        for src, store, name in srcs:
            step = write_rows_unit(src)
            out = create_array(store, name, src.shape, logical_dtype(src), src.chunks,
                               shard_chunks=step // src.chunks[0])
            same_layout.append(out.metadata.to_dict() == src.metadata.to_dict())
            for lo in range(0, src.shape[0], step):
                out[lo:lo + step] = src[lo:lo + step]
    return _timed(work) | {"same_layout_as_source": all(same_layout)}


def _file_copy(args: argparse.Namespace) -> dict:
    src, dst = Path(args.root, "activations"), Path(args.root, "copy_files")
    return _timed(lambda: shutil.copytree(src, dst) and None)


def _shuffle(args: argparse.Namespace) -> dict:
    import zarr

    from storage.root import StorageRoot
    from storage.layout import shuffled
    from tasks.stages.shuffle import shuffle_site_layer

    cfg, root = _config(args, args.root, args.bucket), StorageRoot(args.root)
    n_shards = len(_shard_rows(args.size, args.shard_rows))
    result = {}

    def work():
        result.update(shuffle_site_layer(cfg, SITE, LAYER, n_shards, "benchmark", root)["metrics"])
    out = _timed(work)
    group = zarr.open_group(store=root.zarr_store(shuffled(SITE, LAYER), read_only=True), mode="r")
    x = group["x"]
    return out | {"buckets": result["buckets"], "bucket_rows": group.attrs["bucket_rows"],
                  "out_chunk_rows": x.chunks[0], "out_shard_rows": (x.shards or x.chunks)[0]}


class _Phases:
    """Wall, user and system seconds and minor page faults, summed per named step."""

    def __init__(self):
        self.steps: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        yield
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step = self.steps.setdefault(name, dict.fromkeys(["s", "user_s", "sys_s", "minor_faults"], 0.0))
        for key, value in [("s", t1 - t0), ("user_s", r1.ru_utime - r0.ru_utime), ("sys_s", r1.ru_stime - r0.ru_stime),
                           ("minor_faults", r1.ru_minflt - r0.ru_minflt)]:
            step[key] += value


def _phases(args: argparse.Namespace) -> dict:
    """A replica of tasks/shuffle.py's one_bucket (its own row reader and statistics), run one bucket at a time
    with a timer around each step, to show where the shuffle spends its time."""
    import numpy as np
    import zarr

    from storage.arrays import create_array, logical_dtype, write_rows_unit
    from storage.root import StorageRoot
    from tasks.config import SITES
    from storage.layout import activation_shard
    from tasks.stages.shuffle import ConcatRows, bucket_rows, stored_row_sums

    cfg, root = _config(args, args.root, args.bucket), StorageRoot(args.root)
    groups = [zarr.open_group(store=root.zarr_store(activation_shard(SITE, LAYER, s), read_only=True), mode="r")
              for s in range(len(_shard_rows(args.size, args.shard_rows)))]
    x_src, i_src = ConcatRows([g["x"] for g in groups]), ConcatRows([g["index"] for g in groups])
    n, d, dtype = len(x_src), groups[0]["x"].shape[1], logical_dtype(groups[0]["x"])
    chunk, per_shard = cfg.sae.batch_size, cfg.storage.shard_chunks
    x_out, i_out = (create_array(root.zarr_store(f"phases/{name}"), name, (n, width), kind, (chunk, width),
                                 shard_chunks=per_shard)
                    for name, width, kind in [("x", d, dtype), ("index", 2, "int32")])
    bucket = bucket_rows(cfg.shuffle.bucket_rows, write_rows_unit(x_out))
    step = _Phases()
    t0 = time.perf_counter()
    for b in range(-(-n // bucket)):
        lo, hi = b * bucket, min(n, (b + 1) * bucket)
        perm = np.random.default_rng([cfg.seed, SITES.index(SITE), LAYER, b]).permutation(hi - lo)
        with step("read_x"):
            raw = x_src.read(lo, hi)
        with step("permute_x"):
            raw = raw[perm]
        with step("write_x"):
            x_out[lo:hi] = raw
        with step("index"):
            i_out[lo:hi] = i_src.read(lo, hi)[perm]
        with step("stats_sliced_float64"):
            stored_row_sums(raw, dtype)
    return {"steps": step.steps, "stage_s": time.perf_counter() - t0, "bucket_rows": bucket,
            "peak_rss_mb": _peak_rss_mb()}


CHILDREN = {"build": _build, "zarr_copy": _zarr_copy, "file_copy": _file_copy, "shuffle": _shuffle,
            "phases": _phases}


# ---------------------------------------------------------------- parent

def _run_child(args: argparse.Namespace, mode: str, root: str, size: int, bucket: int = 0) -> dict:
    passed = {"--root": root, "--size": size, "--bucket": bucket, "--shard-rows": args.shard_rows, "--d": args.d,
              "--dtype": args.dtype, "--ctx": args.ctx, "--chunk-rows": args.chunk_rows,
              "--shard-chunks": args.shard_chunks, "--batch-size": args.batch_size, "--workers": args.workers,
              "--seed": args.seed}
    cmd = [sys.executable, __file__, "--child", mode, *[str(v) for kv in passed.items() for v in kv]]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"child {mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(args: argparse.Namespace, runs: list[tuple[str, int]], root: str, size: int) -> list[dict]:
    """Best of `repeats` rounds of every run, interleaved so a busy spell on the machine hits all of them alike;
    each from a cold page cache (when allowed), its outputs removed afterwards."""
    tries: list[list[dict]] = [[] for _ in runs]
    for _ in range(args.repeats):
        for (mode, bucket), out in zip(runs, tries, strict=True):
            cold = not args.warm and _drop_caches()
            out.append(_run_child(args, mode, root, size, bucket) | {"cold_cache": cold})
            for folder in ("copy_zarr", "copy_files", "shuffled"):
                shutil.rmtree(Path(root, folder), ignore_errors=True)
    return [min(t, key=lambda r: r["s"]) | {"all_s": [r["s"] for r in t],
                                            "peak_rss_mb": max(r["peak_rss_mb"] for r in t)} for t in tries]


HEADER = (f"{'rows':>8s} {'GB':>5s} | {'what':9s} | {'bucket rows (asked)':>19s} {'MB':>5s} | {'s':>6s} {'GB/s':>6s} "
          f"{'ratio':>5s} | {'s+sync':>6s} {'GB/s':>6s} {'ratio':>5s} | {'peak RSS MB':>11s} {'at start':>8s}")


def _print_row(r: dict) -> None:
    bucket = " " * 25
    if "bucket_rows" in r:
        bucket = f"{r['bucket_rows']:>10,d} ({r['bucket_asked']:>7,d}) {r['bucket_bytes'] / 1e6:5.0f}"
    print(f"{r['rows']:8,d} {r['data_bytes'] / 1e9:5.2f} | {r['kind']:9s} | {bucket} | {r['s']:6.2f} "
          f"{r['gb_per_s']:6.3f} {r['ratio']:5.3f} | {r['s_synced']:6.2f} {r['gb_per_s_synced']:6.3f} "
          f"{r['ratio_synced']:5.3f} | {r['peak_rss_mb']:11.0f} {r['rss_before_mb']:8.0f}", flush=True)


def _one_size(args: argparse.Namespace, size: int, tmp: str) -> tuple[list[dict], list[dict]]:
    itemsize = ITEMSIZE[args.dtype]
    data_bytes = size * (args.d * itemsize + 2 * 4)  # x plus the int32 index pair, per row
    t0 = time.perf_counter()
    built = _run_child(args, "build", tmp, size)
    stored = folder_bytes(Path(tmp, "activations"))
    print(f"built {built['shards']} extract shards, {size:,d} rows x {args.d} {args.dtype}: {data_bytes / 1e9:.2f} GB "
          f"({stored / 1e9:.2f} GB on disk) in {time.perf_counter() - t0:.0f} s", flush=True)
    runs = [("zarr_copy", 0), ("file_copy", 0)] + [("shuffle", b) for b in args.buckets]
    rows, copy = [], None
    for (kind, bucket), best in zip(runs, _measure(args, runs, tmp, size), strict=True):
        r = {"kind": kind, "rows": size, "data_bytes": data_bytes, "stored_bytes": stored, **best}
        r |= {"gb_per_s": data_bytes / r["s"] / 1e9, "gb_per_s_synced": data_bytes / r["s_synced"] / 1e9}
        copy = copy or r
        r |= {"ratio": r["gb_per_s"] / copy["gb_per_s"], "ratio_synced": r["gb_per_s_synced"] / copy["gb_per_s_synced"]}
        if bucket:
            bucket_bytes = r["bucket_rows"] * args.d * itemsize
            r |= {"bucket_asked": bucket, "bucket_bytes": bucket_bytes,
                  "rss_growth_over_bucket": (r["peak_rss_mb"] - r["rss_before_mb"]) * 2**20 / bucket_bytes}
        rows.append(r)
        _print_row(r)
        if r.get("same_layout_as_source") is False:
            print("  warning: create_array no longer reproduces the extract layout; the zarr copy differs from it")
    phases = []
    if args.phases and size == args.sizes[0]:
        for bucket in args.buckets:
            if not args.warm:
                _drop_caches()
            p = _run_child(args, "phases", tmp, size, bucket) | {"rows": size}
            phases.append(p)
            print(f"steps of a one-bucket-at-a-time replica, bucket {p['bucket_rows']:,d} rows, {size:,d} rows: "
                  f"stage {p['stage_s']:.2f} s (wall / user / sys s, minor faults)")
            for name, v in p["steps"].items():
                print(f"  {name:31s} {v['s']:6.2f} {v['user_s']:6.2f} {v['sys_s']:6.2f} {v['minor_faults']:9,.0f}")
    return rows, phases


def _machine() -> dict:
    import numpy
    import torch
    import zarr

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "memory_gib": round(mem / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__,
            "zarr": zarr.__version__, "load_average_at_start": os.getloadavg()}


def _parent(args: argparse.Namespace) -> None:
    machine, t0 = _machine(), time.perf_counter()
    cfg = _config(args, "unused")
    print(f"storage: chunk_rows {cfg.storage.chunk_rows}, shard_chunks {cfg.storage.shard_chunks}; shuffled chunk "
          f"rows (sae.batch_size) {cfg.sae.batch_size}; shuffle.workers {args.workers}; ratio = rate / zarr_copy rate")
    print(HEADER)
    results, phases = [], []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.tmp, prefix="shuffle-bench-") as tmp:
            rows, p = _one_size(args, size, tmp)
        results += rows
        phases += p
    machine |= {"load_average_at_end": os.getloadavg(), "cold_cache": all(r["cold_cache"] for r in results)}
    report = {"command": " ".join([".venv/bin/python", *sys.argv]), "args": vars(args), "machine": machine,
              "storage": cfg.storage.model_dump(exclude={"root"}), "wall_s": time.perf_counter() - t0,
              "results": results, "phases": phases}
    write_json(args.out, report)
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[262144, 524288], help="total rows (one run each)")
    p.add_argument("--buckets", type=int, nargs="+", default=[65536, 131072], help="shuffle.bucket_rows values")
    p.add_argument("--shard-rows", type=int, default=131072, help="rows per extract shard")
    p.add_argument("--d", type=int, default=2304, help="activation width (Gemma 2 2B d_model)")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(ITEMSIZE))
    p.add_argument("--ctx", type=int, default=1024, help="tokens per sequence, for the index column")
    p.add_argument("--chunk-rows", type=int, default=0, help="storage.chunk_rows (default: the config's)")
    p.add_argument("--shard-chunks", type=int, default=0, help="storage.shard_chunks (default: the config's)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="sae.batch_size = the shuffled array's chunk rows (default: the config's)")
    p.add_argument("--workers", type=int, default=2, help="shuffle.workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="rounds of every timing; the best is kept")
    p.add_argument("--warm", action="store_true", help="keep the page cache (dropping it is machine-wide: other "
                                                       "processes' reads go cold too)")
    p.add_argument("--phases", action="store_true", help="also time each step of a sequential shuffle replica")
    p.add_argument("--tmp", default=None, help="folder for the temporary storage root (default: the system's)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/shuffle-cpu.json"))
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--bucket", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return
    _parent(args)


if __name__ == "__main__":
    main()
