"""Extraction throughput against the same model's bare forward pass, and extraction's peak memory at two
shard sizes (issue 4's overlap and bounded-memory figures).

For each activation dtype, one child process per shard size: it tokenizes the embedded corpus into a
temporary run root (the real tokenize stage), warms the model, times `extract_shard` (every site and layer
captured, encoded and written to zarr on local disk by the background writer) between bare forward passes
over the same batches (no hooks, nothing stored), and reports its peak RSS. Ratio = extraction tokens/s /
bare-forward tokens/s, against the mean of the bare passes just before and after; the goal is >= 0.85.

The default is one torch thread: the extract stage runs as a Ray task with `orchestration.cpus_per_unit.extract`
CPUs (1), and Ray sets OMP_NUM_THREADS to that, so torch computes on one core while the writer thread uses
another. `--threads 2` shows the same on a 2-core machine with torch on both cores (the writer then competes
with the forward pass for CPU).

    .venv/bin/python benchmarks/extract.py                       # tiny model, CPU: 3 dtypes x 2 shard sizes
    .venv/bin/python benchmarks/extract.py --dtypes bfloat16 --threads 2
    python benchmarks/extract.py --device cuda --random-model google/gemma-2-2b --dtypes bfloat16 \
        --ctx 1024 --sizes 64 --batch 16 --layers 0,5,10,15,20,25 --sites res \
        --out benchmarks/results/extract-cuda.json      # on a GPU machine: one wave of six groups (benchmarks/gpu.sh)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, folder_bytes, write_json


def _child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import yaml
    import zarr

    from flows.config import SuiteConfig
    from storage.root import StorageRoot
    from tasks.lm.sites import forward_until
    from tasks.stages.extract import extract_shard
    from tasks.lm.model import load_model, pick_device
    from storage.layout import TOKENS_TRAIN
    from tasks.stages.tokenize import tokenize_corpus
    from random_model import random_model

    if args.threads:
        torch.set_num_threads(args.threads)
    raw = yaml.safe_load((REPO / args.config).read_text())
    with tempfile.TemporaryDirectory(dir=args.root or None) as tmp:
        raw["storage"].update(root=tmp, activation_dtype=args.dtype)
        if args.chunk_rows:
            raw["storage"].update(chunk_rows=args.chunk_rows)
        if args.shard_chunks:
            raw["storage"].update(shard_chunks=args.shard_chunks)
        raw["corpus"].update(max_train_seqs=args.size)
        if args.ctx:
            raw["corpus"].update(ctx=args.ctx)
        raw["extract"].update(seqs_per_shard=args.size, batch_size=args.batch)
        if args.random_model:
            path = random_model(args.random_model, args.model_dtype, Path(tmp) / "model",
                                "cuda" if args.device == "cuda" else "cpu")
            raw["model"] = {"name_or_path": path, "dtype": args.model_dtype, "device": args.device}
        elif args.device != "auto":
            raw["model"]["device"] = args.device
        if args.sites:
            raw["sites"] = args.sites.split(",")
        cfg = SuiteConfig.model_validate(raw)
        root = StorageRoot(tmp)
        tokenize_corpus(cfg, root)
        tokens = zarr.open_array(store=root.zarr_store(TOKENS_TRAIN, read_only=True), mode="r")[:args.size]
        model = load_model(cfg.model)
        device = pick_device(cfg.model.device)
        layers = ([int(x) for x in args.layers.split(",")] if args.layers
                  else list(range(model.config.num_hidden_layers)))
        batches = [torch.from_numpy(tokens[s:s + args.batch].astype(np.int64)).to(device)
                   for s in range(0, len(tokens), args.batch)]
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        last = max(layers)
        keys = [(s, layer) for s in cfg.sites for layer in layers]

        cpu: dict[str, list[float]] = {"bare_main": [], "extract_main": [], "extract_other_threads": [],
                                        "extract_kernel": []}

        def timed(fn, name: str = "") -> float:
            """Wall seconds. Also CPU seconds, which locate what the writes cost: this (the forward) thread's, the
            process's other threads' (the writer, zarr's I/O threads), and the process's time in the kernel."""
            t0, c0, p0 = time.perf_counter(), time.thread_time(), os.times()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall, main, p1 = time.perf_counter() - t0, time.thread_time() - c0, os.times()
            if name:
                cpu[f"{name}_main"].append(main)
            if name == "extract":
                cpu["extract_other_threads"].append(p1.user - p0.user + p1.system - p0.system - main)
                cpu["extract_kernel"].append(p1.system - p0.system)
            return wall

        def bare_pass():
            with torch.inference_mode():
                for b in batches:
                    forward_until(model, b, last)

        def full_pass():
            with torch.inference_mode():
                for b in batches:
                    model(b)

        result: dict = {}

        def extract_pass() -> None:
            result["metrics"] = extract_shard(cfg, 0, keys, root).metrics  # a UnitResult

        bare_pass()  # warm-up of both paths, so the first round is not special
        extract_pass()
        full_pass()
        # each extraction is bracketed by a bare pass before and after it (bare, extract, bare, extract, ...,
        # bare) and its ratio taken against their mean, so load drifting on a shared machine hits both sides
        # alike; the median over the rounds is reported
        bare, extract, ratios = [timed(bare_pass, "bare")], [], []
        for _ in range(args.repeats):
            extract.append(timed(extract_pass, "extract"))
            bare.append(timed(bare_pass, "bare"))
            ratios.append((bare[-2] + bare[-1]) / 2 / extract[-1])
        full = [timed(full_pass) for _ in range(2)]
        n_tokens = int(tokens.size)
        written = folder_bytes(Path(tmp, "activations"))
        from tasks.capacity import ModelShape

        fpt = ModelShape.from_hf_config(model.config).forward_flops_per_token(n_tokens // len(tokens), last,
                                                                              logits=False)
        return {"model": cfg.model.name_or_path, "device": str(device), "forward_flops_per_token": fpt,
                "dtype": args.dtype, "seqs": int(len(tokens)), "tokens": n_tokens, "rows": result["metrics"]["rows"],
                "site_layers": len(cfg.sites) * len(layers), "batch": args.batch,
                "root": args.root or tempfile.gettempdir(),
                "bare_s": min(bare), "extract_s": min(extract), "full_forward_s": min(full),
                "full_forward_tokens_per_s": n_tokens / min(full),
                "bare_tokens_per_s": n_tokens / min(bare), "extract_tokens_per_s": n_tokens / min(extract),
                "ratio": statistics.median(ratios), "ratio_of_best": min(bare) / min(extract),
                "ratios": ratios, "bytes_written": written,
                "cpu_s_median": {k: statistics.median(v) for k, v in cpu.items()},
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_after_tokenize_and_model_mb": rss_before / 1024,
                "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32", "float16"])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 4096], help="sequences per shard")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1, as in a Ray task with num_cpus=1; 0: torch's default)")
    p.add_argument("--chunk-rows", type=int, default=0, help="override storage.chunk_rows (default: the config's)")
    p.add_argument("--device", default="auto", help="cpu, cuda (default: cuda when there is one)")
    p.add_argument("--random-model", default="", help="e.g. google/gemma-2-2b: a randomly initialised model of "
                                                      "that architecture instead of the config's model")
    p.add_argument("--ctx", type=int, default=0, help="tokens per sequence (default: the config's)")
    p.add_argument("--model-dtype", default="bfloat16", help="with --random-model: its dtype")
    p.add_argument("--shard-chunks", type=int, default=0,
                   help="override storage.shard_chunks (default: the config's)")
    p.add_argument("--layers", default="", help="comma list of the layers captured (default: all), e.g. a wave's")
    p.add_argument("--sites", default="", help="comma list of the sites captured (default: the config's)")
    p.add_argument("--root", default="", help="where the run root is made (default: the system's temporary folder; "
                                             "/dev/shm: memory, to time the pipeline without the disk)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/extract-cpu.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return

    rows = []
    for dtype in args.dtypes:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--child", "--config", args.config, "--dtype", dtype, "--size", str(size),
                   "--batch", str(args.batch), "--repeats", str(args.repeats), "--threads", str(args.threads),
                   "--chunk-rows", str(args.chunk_rows), "--shard-chunks", str(args.shard_chunks),
                   "--device", args.device, "--random-model", args.random_model, "--model-dtype", args.model_dtype,
                   "--ctx", str(args.ctx), "--root", args.root, "--layers", args.layers, "--sites", args.sites]
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"extract.py child ({dtype}, {size} seqs) failed:\n{out.stderr[-4000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r, c = rows[-1], rows[-1]["cpu_s_median"]
            print(f"{dtype:9s} {r['seqs']:5d} seqs {r['tokens']:7,d} tokens x {r['site_layers']} site-layers | "
                  f"full fwd {r['full_forward_tokens_per_s']:9,.0f} | bare {r['bare_tokens_per_s']:9,.0f} tok/s | "
                  f"extract {r['extract_tokens_per_s']:9,.0f} tok/s | ratio {r['ratio']:.3f} | "
                  f"{r['bytes_written'] / 1e6:6.1f} MB written | peak RSS {r['peak_rss_mb']:6.0f} MB "
                  f"(after model load {r['rss_after_tokenize_and_model_mb']:.0f})", flush=True)
            print(f"{'':9s} CPU s: forward thread bare {c['bare_main']:.2f}, extraction {c['extract_main']:.2f}; "
                  f"other threads {c['extract_other_threads']:.2f}; kernel {c['extract_kernel']:.2f}", flush=True)
    write_json(args.out, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
