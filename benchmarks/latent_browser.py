"""The report's latent browser on a run's own latents: the CPU time `write_latent_browser` takes for every
SAE of the suite model, and one sha256 over every file it writes, so two commits can be checked to write the
same bytes (run it at each; the digests must match).

    .venv/bin/python benchmarks/latent_browser.py CONFIG [--rounds 2]
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch

from flows.config import load_suite_config
from storage.root import StorageRoot
from tasks.latent_tables import decode_tokens, load_sae_latents
from tasks.lm.model import load_tokenizer
from tasks.reporting import write_latent_browser
from storage.layout import SUITE_JSON
from tasks.stages.report import collect_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_suite_config(args.config)
    root = StorageRoot(cfg.storage.root, cfg.storage.storage_options)
    layers = root.read_json(SUITE_JSON)["resolved"]["layers"]
    rows = collect_metrics(root, [(site, layer) for site in cfg.sites for layer in layers])
    latents = [load_sae_latents(root, r["site"], r["layer"], r["width"], r["sae_path"].rsplit("/", 1)[1]) for r in rows]
    tokenizer = load_tokenizer(cfg.model)
    best, digest = None, ""
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.process_time()
            write_latent_browser(Path(tmp), iter(latents), lambda ids: decode_tokens(tokenizer, ids), title="bench")
            spent = time.process_time() - t0
            files = sorted(q for q in Path(tmp).rglob("*") if q.is_file())
            digest = hashlib.sha256(b"".join(q.relative_to(tmp).as_posix().encode() + q.read_bytes()
                                             for q in files)).hexdigest()
        best = spent if best is None else min(best, spent)
    print(f"{len(latents)} SAEs: {best:.2f} CPU-s (best of {args.rounds}); files sha256 {digest}")


if __name__ == "__main__":
    main()
