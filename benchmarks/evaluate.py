"""Evaluation from layer L (issue 12): the evaluate stage's cost per SAE against one forward pass from layer
L, and its speed-up over the previous implementation, on the embedded tiny model and on a deeper randomly
initialised Gemma-2-architecture model; optionally every unit of an existing run re-evaluated by both.

The previous implementation is the evaluate module at commit edf0c43, read from git (`git show`), so the
baseline is the code the stage ran before, not a copy kept here. Both run in this process on the same eval
tokens (the tokenize stage on the config's corpus, in a temporary root) and SAEs (random JumpReLU SAEs in
their released form, the config's widths x lambdas: dense compute, so their weights do not change the time).

Per (site, layer) unit and round, interleaved because this machine's speed drifts 1.5x from run to run:
`evaluate_saes` old and new with the unit's SAEs, new with none (the clean pass and the unit's fixed costs),
and `forward_from_layer` from layer L on the same batches (layers L.., final norm, unembedding, soft-capping).
- cost per SAE / forward from L = ((new - new without SAEs) / SAEs) / forward from L, each the best of the
  rounds; goal <= 1.2. (The residual and MLP sites' spliced passes start at layer L+1.)
- the stage's speed-up = sum over units of old / sum of new, per round (median over rounds).
The deep model has the tiny model's shapes with `--deep-layers` layers, on the first `--deep-seqs` eval
sequences (its units would take minutes each round otherwise). The unit's SAE reads and parquet write, the
same code before and after, are outside these timings; `--run ROOT` times whole units (`evaluate_site_layer`)
on a copy of a run's inputs and compares every field with the run's stored evals.

    .venv/bin/python benchmarks/evaluate.py                         # 1 torch thread, as a Ray unit runs
    .venv/bin/python benchmarks/evaluate.py --run runs/tiny         # also re-evaluate a finished tiny run
    python benchmarks/evaluate.py --device cuda --no-baseline --skip-tiny --random-model google/gemma-2-2b \
        --layers 0,12,25 --widths 16384 --ctx 1024 --deep-seqs 16 --batch 8   # a GPU machine (benchmarks/gpu.sh)

On a GPU machine the working tree travels without .git, so `--no-baseline` leaves the previous module out:
the cost per SAE against a forward from L is what the GPU figure is for.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import AutoTokenizer, Gemma2ForCausalLM

from common import REPO, cpu_name, write_json
from random_model import random_model
from flows.config import load_suite_config
from sae import JumpReLUSAE, sweep_points
from storage import layout
from storage.root import StorageRoot
from tasks.lm.embedded import tiny_gemma2_config
from tasks.lm.model import load_model, resolve_model_path
from tasks.lm.partial_forward import forward_from_layer, recording_layer_inputs
from tasks.lm.sites import site_width
from tasks.stages import evaluate as new_evaluate
from tasks.stages.tokenize import tokenize_corpus

BASELINE_COMMIT = "edf0c43"


def load_previous_evaluate(commit: str, folder: Path):
    """The evaluate module as it was at `commit`, imported under its own name."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:tasks/stages/evaluate.py"],
                            check=True, capture_output=True, text=True).stdout
    path = folder / "previous_evaluate.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("previous_evaluate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def deep_model(n_layers: int, folder: Path) -> str:
    """The tiny model's config with `n_layers` layers, randomly initialised, with the embedded tokenizer."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded:tiny-gemma2"))
    config = tiny_gemma2_config(len(tok))
    config.num_hidden_layers = n_layers
    config.layer_types = [("sliding_attention", "full_attention")[i % 2] for i in range(n_layers)]
    torch.manual_seed(0)
    Gemma2ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def random_saes(cfg, d_in: int, seed: int) -> list[JumpReLUSAE]:
    gen = torch.Generator().manual_seed(seed)
    return [JumpReLUSAE(d_in, p.width, generator=gen).folded(1.0) for p in sweep_points(cfg.sae)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_initialized():  # a GPU's kernels run behind the Python that queued them
        torch.cuda.synchronize()
    return time.perf_counter() - start


def forward_from_layer_pass(model, batches: list[torch.Tensor], layer: int):
    """A function running layers `layer`.. on every batch, from inputs recorded here (not timed)."""
    recorded = []
    with torch.inference_mode():
        for batch in batches:
            with recording_layer_inputs(model, layer) as inputs:
                model(batch.to(model.device), use_cache=False)
            recorded.append(inputs)

    def run():
        with torch.inference_mode():
            for inputs in recorded:
                forward_from_layer(model, inputs)
    return run


def time_units(cfg, root: StorageRoot, previous, rounds: int, layers: list[int] | None = None) -> dict:
    """Per unit and round: old (unless `previous` is None), new, new without SAEs, forward from L (order
    reversed every other round), at `layers` (default all)."""
    model = load_model(cfg.model)
    n = model.config.num_hidden_layers
    layers = layers or list(range(n))
    tokens = new_evaluate.load_eval_tokens(cfg, root)
    batches = [torch.from_numpy(tokens[s:s + cfg.evaluate.batch_size].astype(np.int64))
               for s in range(0, len(tokens), cfg.evaluate.batch_size)]
    units = [(site, layer) for site in cfg.sites for layer in layers]
    saes = {u: random_saes(cfg, site_width(model.config, u[0]), seed=i) for i, u in enumerate(units)}
    forwards = {layer: forward_from_layer_pass(model, batches, layer) for layer in layers}
    steps = {} if previous is None else {"old": lambda u: previous.evaluate_saes(cfg, *u, saes[u], root)}
    steps |= {
        "new": lambda u: new_evaluate.evaluate_saes(cfg, *u, saes[u], root),
        "new_no_saes": lambda u: new_evaluate.evaluate_saes(cfg, *u, [], root),
        "forward_from_layer": lambda u: forwards[u[1]](),
    }
    for name in steps:  # warm-up: first calls load and allocate
        timed(lambda: steps[name](units[0]))
    times = {u: {name: [] for name in steps} for u in units}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for u in units:
            for name in order:
                times[u][name].append(timed(lambda: steps[name](u)))
    n_saes = len(sweep_points(cfg.sae))
    per_unit = []
    for (site, layer), t in times.items():
        best = {k: min(v) for k, v in t.items()}  # load on a shared machine only ever adds time
        per_sae = (best["new"] - best["new_no_saes"]) / n_saes
        per_unit.append({"site": site, "layer": layer, **{f"{k}_s": v for k, v in best.items()},
                         "per_sae_s": per_sae, "per_sae_over_forward_from_layer": per_sae / best["forward_from_layer"],
                         "speedup": best["old"] / best["new"] if "old" in best else None})
    ratios = [u["per_sae_over_forward_from_layer"] for u in per_unit]
    out = {"model": cfg.model.name_or_path, "device": str(model.device), "dtype": cfg.model.dtype, "layers": n,
           "unit_layers": layers, "d_model": model.config.hidden_size, "vocab": model.config.vocab_size,
           "eval_seqs": len(tokens), "ctx": int(tokens.shape[1]), "batch_size": cfg.evaluate.batch_size,
           "widths": list(cfg.sae.widths), "saes_per_unit": n_saes, "rounds": rounds,
           "stage_new_s": statistics.median(sum(t["new"][r] for t in times.values()) for r in range(rounds)),
           "per_sae_over_forward_from_layer": {"median": statistics.median(ratios), "max": max(ratios),
                                               "min": min(ratios)},
           "units": per_unit}
    if previous is not None:
        speedups = [sum(t["old"][r] for t in times.values()) / sum(t["new"][r] for t in times.values())
                    for r in range(rounds)]
        out |= {"stage_speedup": statistics.median(speedups), "stage_speedup_by_round": speedups,
                "stage_old_s": statistics.median(sum(t["old"][r] for t in times.values()) for r in range(rounds))}
    return out


def copy_run_inputs(run: Path, dest: Path) -> None:
    """What evaluate units read: eval tokens, SAEs, the shuffle statistics; and the stored evals."""
    for name in ("tokens", "saes", "evals"):
        shutil.copytree(run / name, dest / name)
    for stats in run.glob("shuffled/*/layer_*/zarr.json"):
        target = dest / stats.relative_to(run)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stats, target)


def field_differences(rows_a: list[dict], rows_b: list[dict]) -> dict:
    """Per field that differs anywhere: the largest |a - b| / max(|a|, |b|) (or "differs" for non-floats)."""
    out: dict = {}
    for a, b in zip(rows_a, rows_b, strict=True):
        for key in a:
            if a[key] == b[key]:
                continue
            if isinstance(a[key], float):
                rel = abs(a[key] - b[key]) / max(abs(a[key]), abs(b[key]))
                out[key] = max(out.get(key, 0.0), rel)
            else:
                out[key] = "differs"
    return out


def rerun_units(cfg, run: Path, previous, folder: Path) -> dict:
    """Every unit of `run` by the previous and the new `evaluate_site_layer` (one round, interleaved)."""
    copy_run_inputs(run, folder)
    root = StorageRoot(str(folder))
    units, old_s, new_s = [], 0.0, 0.0
    for site in cfg.sites:
        for layer in range(load_model(cfg.model).config.num_hidden_layers):
            rel = layout.eval_table(site, layer)
            stored = pq.read_table(io.BytesIO(root.read_bytes(rel))).to_pylist()
            rows = {}
            for name, module in (("old", previous), ("new", new_evaluate)):
                t = timed(lambda: module.evaluate_site_layer(cfg, site, layer, root))
                old_s, new_s = (old_s + t, new_s) if name == "old" else (old_s, new_s + t)
                rows[name] = pq.read_table(io.BytesIO(root.read_bytes(rel))).to_pylist()
            units.append({"site": site, "layer": layer, "new_vs_old": field_differences(rows["new"], rows["old"]),
                          "new_vs_stored": field_differences(rows["new"], stored),
                          "old_vs_stored": field_differences(rows["old"], stored)})
    return {"run": str(run), "old_s": old_s, "new_s": new_s, "speedup": old_s / new_s, "units": units}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as a Ray unit)")
    p.add_argument("--deep-layers", type=int, default=12)
    p.add_argument("--deep-seqs", type=int, default=16, help="eval sequences for the deep model's units")
    p.add_argument("--run", default="", help="a finished run's root to re-evaluate (its units, old and new)")
    p.add_argument("--device", default="", help="cpu, cuda (default: the config's model.device)")
    p.add_argument("--no-baseline", action="store_true", help="leave the previous module (read from git) out")
    p.add_argument("--skip-tiny", action="store_true", help="only the deep model's units")
    p.add_argument("--random-model", default="", help="e.g. google/gemma-2-2b: the deep model is a randomly "
                                                      "initialised one of that architecture, in --model-dtype")
    p.add_argument("--model-dtype", default="bfloat16", help="with --random-model: its dtype")
    p.add_argument("--layers", default="", help="comma list: the deep model's units at these layers (default all)")
    p.add_argument("--widths", default="", help="comma list replacing sae.widths (default: the config's)")
    p.add_argument("--ctx", type=int, default=0, help="tokens per sequence (default: the config's)")
    p.add_argument("--batch", type=int, default=0, help="evaluate.batch_size (default: the config's)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/evaluate-cpu.json"))
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    result = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "baseline_commit": None if args.no_baseline else BASELINE_COMMIT,
              "command": " ".join(["benchmarks/evaluate.py", *sys.argv[1:]])}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        previous = None if args.no_baseline else load_previous_evaluate(BASELINE_COMMIT, tmp)
        cfg = load_suite_config(REPO / args.config)
        cfg.storage.root = str(tmp / "root")
        cfg.model.device = args.device or cfg.model.device
        cfg.sae.widths = [int(w) for w in args.widths.split(",")] if args.widths else cfg.sae.widths
        cfg.corpus.ctx = args.ctx or cfg.corpus.ctx
        cfg.evaluate.batch_size = args.batch or cfg.evaluate.batch_size
        root = StorageRoot(cfg.storage.root)
        tokenize_corpus(cfg, root)
        if not args.skip_tiny:
            result["tiny"] = time_units(cfg, root, previous, args.rounds)
            write_json(args.out, result)  # after each part, so a run cut short keeps what it measured
            print(f"tiny: stage speed-up {result['tiny'].get('stage_speedup', float('nan')):.2f}", flush=True)
        deep = cfg.model_copy(deep=True)
        if args.random_model:
            device = "cuda" if str(cfg.model.device).startswith("cuda") else "cpu"
            deep.model.name_or_path = random_model(args.random_model, args.model_dtype, tmp / "deep-model", device)
            deep.model.dtype = args.model_dtype
        else:
            deep.model.name_or_path = deep_model(args.deep_layers, tmp / "deep-model")
        deep.evaluate.n_seqs = args.deep_seqs
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
        result["deep"] = time_units(deep, root, previous, args.rounds, layers)
        write_json(args.out, result)
        d, ratio = result["deep"], result["deep"]["per_sae_over_forward_from_layer"]
        print(f"deep ({d['model']}, {d['device']}): cost per SAE / forward from L median {ratio['median']:.2f}, "
              f"max {ratio['max']:.2f}; stage speed-up {d.get('stage_speedup', float('nan')):.2f}", flush=True)
        if args.run:
            result["run"] = rerun_units(cfg, Path(args.run).resolve(), previous, tmp / "run-copy")
    print(f"wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
