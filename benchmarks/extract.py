"""Extraction throughput against the same model's bare forward pass, and extraction's peak memory at two
shard sizes (issue 4's overlap and bounded-memory figures).

For each activation dtype, one child process per shard size: it tokenizes the embedded corpus into a
temporary run root (the real tokenize stage), warms the model, times the bare forward pass over the
shard's batches (no hooks, nothing stored), then times `extract_shard` on the same batches (every site
and layer captured, encoded and written to zarr on local disk by the background writer), and reports its
peak RSS. Ratio = extraction tokens/s / bare-forward tokens/s; the goal is >= 0.85.

    .venv/bin/python benchmarks/extract.py                       # tiny model, CPU
    .venv/bin/python benchmarks/extract.py --dtypes bfloat16 --sizes 256 1024 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import yaml
    import zarr

    from flows.config import SuiteConfig
    from storage.root import StorageRoot
    from tasks.extract import extract_shard, forward_until
    from tasks.model import load_model, pick_device
    from tasks.tokenize import TOKENS_TRAIN, tokenize_corpus

    if args.threads:
        torch.set_num_threads(args.threads)
    raw = yaml.safe_load((REPO / args.config).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        raw["storage"].update(root=tmp, activation_dtype=args.dtype)
        if args.chunk_rows:
            raw["storage"].update(chunk_rows=args.chunk_rows)
        if args.shard_chunks:
            raw["storage"].update(shard_chunks=args.shard_chunks)
        raw["corpus"].update(max_train_seqs=args.size)
        raw["extract"].update(seqs_per_shard=args.size, batch_size=args.batch)
        cfg = SuiteConfig.model_validate(raw)
        root = StorageRoot(tmp)
        tokenize_corpus(cfg, root)
        tokens = zarr.open_array(store=root.zarr_store(TOKENS_TRAIN, read_only=True), mode="r")[:args.size]
        model = load_model(cfg.model)
        device = pick_device(cfg.model.device)
        layers = list(range(model.config.num_hidden_layers))
        batches = [torch.from_numpy(tokens[s:s + args.batch].astype(np.int64)).to(device)
                   for s in range(0, len(tokens), args.batch)]
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        last = max(layers)
        with torch.inference_mode():
            model(batches[0])  # warm-up
            bare, full = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for b in batches:
                    forward_until(model, b, last)
                bare.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for b in batches:
                    model(b)
                full.append(time.perf_counter() - t0)
        extract = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = extract_shard(cfg, 0, [(s, layer) for s in cfg.sites for layer in layers], root)
            extract.append(time.perf_counter() - t0)
        n_tokens = int(tokens.size)
        written = sum(p.stat().st_size for p in Path(tmp, "activations").rglob("*") if p.is_file())
        from tasks.capacity import ModelShape

        fpt = ModelShape.from_hf_config(model.config).forward_flops_per_token(n_tokens // len(tokens), last,
                                                                              logits=False)
        return {"model": cfg.model.name_or_path, "device": str(device), "forward_flops_per_token": fpt,
                "dtype": args.dtype, "seqs": int(len(tokens)), "tokens": n_tokens, "rows": result["metrics"]["rows"],
                "site_layers": len(cfg.sites) * len(layers), "batch": args.batch,
                "bare_s": min(bare), "extract_s": min(extract), "full_forward_s": min(full),
                "full_forward_tokens_per_s": n_tokens / min(full),
                "bare_tokens_per_s": n_tokens / min(bare), "extract_tokens_per_s": n_tokens / min(extract),
                "ratio": min(bare) / min(extract), "bytes_written": written,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_after_tokenize_and_model_mb": rss_before / 1024,
                "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32", "float16"])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="sequences per shard")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    p.add_argument("--chunk-rows", type=int, default=0, help="override storage.chunk_rows (default: the config's)")
    p.add_argument("--shard-chunks", type=int, default=0,
                   help="override storage.shard_chunks (default: the config's)")
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
                   "--chunk-rows", str(args.chunk_rows), "--shard-chunks", str(args.shard_chunks)]
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{dtype:9s} {r['seqs']:5d} seqs {r['tokens']:7,d} tokens x {r['site_layers']} site-layers | "
                  f"full fwd {r['full_forward_tokens_per_s']:9,.0f} | bare {r['bare_tokens_per_s']:9,.0f} tok/s | extract {r['extract_tokens_per_s']:9,.0f} tok/s | "
                  f"ratio {r['ratio']:.3f} | {r['bytes_written'] / 1e6:6.1f} MB written | "
                  f"peak RSS {r['peak_rss_mb']:6.0f} MB (after model load {r['rss_after_tokenize_and_model_mb']:.0f})",
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
