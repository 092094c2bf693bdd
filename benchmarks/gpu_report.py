"""The GPU script's own two parts (benchmarks/gpu.sh): `peak`, the bf16 matmul peak measured the way the device
notes measured theirs (8192^3 torch.mm on random data, mean of 10 timed products after 3 warm-ups, CUDA
events), so a step's % of peak is against a figure taken in the same run on the same chip; and `summary`,
which reads the parts' JSON files in one folder and states each goal as met or not, so the session that runs
the script reads one short file rather than five long ones.

    python benchmarks/gpu_report.py peak --out $OUT/matmul-peak-cuda.json
    python benchmarks/gpu_report.py summary --dir $OUT --out $OUT/gpu-summary.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common import write_json

DENSE_GOAL = 0.60  # issue 12: the dense step at >= 60% of bf16 matmul peak


def peak(n: int, warm: int, timed: int) -> dict:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(warm):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(timed):
        a @ b
    end.record()
    torch.cuda.synchronize()
    s = start.elapsed_time(end) / 1e3 / timed
    return {"dtype": "bf16", "size": n, "warm": warm, "timed": timed, "s_per_mm": s,
            "flops_per_s": 2.0 * n ** 3 / s, "device_name": torch.cuda.get_device_name(), "torch": torch.__version__}


def _read(folder: Path, name: str) -> dict | list | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def summary(folder: Path) -> dict:
    """Each part's headline figures and its goal, from whichever files the parts left."""
    out: dict = {"missing": []}
    pk = _read(folder, "matmul-peak-cuda.json")
    peak_flops = pk["flops_per_s"] if pk else None
    out["bf16_peak_tflops"] = peak_flops and peak_flops / 1e12
    train = _read(folder, "train-cuda.json")
    if train:
        ref = peak_flops or train["peak_used"]["flops_per_s"]
        dense = {str(r["width"]): r["flops_per_s"] / ref for r in train["ours"] if r["K"] == 1}
        plain = {str(r["width"]): r["flops_per_s"] / ref for r in train.get("reference", [])}
        sparse = {str(w["width"]): w["sparse_over_dense"] for w in train.get("sparse", {}).get("widths", [])}
        out["train"] = {"dense_frac_of_peak": dense, "plain_reference_frac_of_peak": plain,
                        "sparse_over_dense": sparse,
                        "dense_goal_met": bool(dense) and min(dense.values()) >= DENSE_GOAL,
                        "sparse_faster": bool(sparse) and min(sparse.values()) > 1.0}
    else:
        out["missing"].append("train-cuda.json")
    extract = _read(folder, "extract-cuda.json")
    if extract:
        out["extract"] = [{k: r[k] for k in ("model", "seqs", "site_layers", "extract_tokens_per_s",
                                             "bare_tokens_per_s", "ratio")} for r in extract]
    else:
        out["missing"].append("extract-cuda.json")
    writers = _read(folder, "extract-writers-cuda.json")
    if writers:
        out["writers_gb_per_s"] = {str(r["writers"]): r["gb_per_s"] for r in writers["results"]}
    else:
        out["missing"].append("extract-writers-cuda.json")
    ev = _read(folder, "evaluate-cuda.json")
    if ev and "deep" in ev:
        out["evaluate_per_sae_over_forward_from_layer"] = ev["deep"]["per_sae_over_forward_from_layer"]
    else:
        out["missing"].append("evaluate-cuda.json")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    pp = sub.add_parser("peak")
    pp.add_argument("--size", type=int, default=8192)
    pp.add_argument("--warm", type=int, default=3)
    pp.add_argument("--timed", type=int, default=10)
    pp.add_argument("--out", required=True)
    ps = sub.add_parser("summary")
    ps.add_argument("--dir", required=True)
    ps.add_argument("--out", required=True)
    args = p.parse_args()
    if args.part == "peak":
        if not torch.cuda.is_available():
            sys.exit("gpu_report.py peak: no CUDA device")
        result = peak(args.size, args.warm, args.timed)
        print(f"bf16 {args.size}^3 torch.mm: {result['flops_per_s'] / 1e12:.0f} TFLOP/s on {result['device_name']}")
    else:
        result = summary(Path(args.dir))
        print(json.dumps(result, indent=1))
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
