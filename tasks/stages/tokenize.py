"""Stage 1: documents -> fixed-length token sequences, each starting with BOS, in shuffled order.

Shuffling sequence order here is what lets every later contiguous range (a shard, a shuffle bucket) be a
random sample of the corpus.
"""
from __future__ import annotations

import numpy as np
import zarr

from storage.arrays import create_array
from storage.fingerprint import fingerprint
from storage.layout import TOKENS_EVAL, TOKENS_TRAIN
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.lm.corpus import expand_paths, read_documents
from tasks.lm.model import load_tokenizer
from tasks.lm.packing import pack_sequences
from tasks.units import FORMAT_VERSION, UnitResult, UnitSpec

CORPUS_UNIT = "corpus"


def plan_units(cfg: StagesConfig) -> list[UnitSpec]:
    """One unit for the whole corpus, planned before anything else exists."""
    fp = fingerprint("tokenize", FORMAT_VERSION, cfg.seed, cfg.corpus, cfg.model.name_or_path, cfg.model.revision)
    return [UnitSpec(stage="tokenize", unit=CORPUS_UNIT, fingerprint=fp)]


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> UnitResult:
    return tokenize_corpus(cfg, root)


def tokenize_corpus(cfg: StagesConfig, root: StorageRoot) -> UnitResult:
    tok = load_tokenizer(cfg.model)
    if tok.bos_token_id is None or tok.eos_token_id is None:
        raise ValueError(f"model.name_or_path: tokenizer of {cfg.model.name_or_path} has no BOS/EOS token")
    docs_ids: list[list[int]] = []
    for path in expand_paths(cfg.corpus, cfg.storage.storage_options):
        batch: list[str] = []
        for text in read_documents(path, cfg.corpus.text_field, cfg.storage.storage_options):
            batch.append(text)
            if len(batch) == 1024:
                docs_ids.extend(tok(batch, add_special_tokens=False)["input_ids"])
                batch = []
        if batch:
            docs_ids.extend(tok(batch, add_special_tokens=False)["input_ids"])
    n_docs = len(docs_ids)
    rows = pack_sequences(docs_ids, cfg.corpus.ctx, tok.bos_token_id, tok.eos_token_id)
    rng = np.random.default_rng(cfg.seed)
    rows = rows[rng.permutation(len(rows))]
    n_eval = cfg.corpus.n_eval_seqs
    if len(rows) < n_eval + 1:
        raise ValueError(f"corpus.paths: corpus packs into only {len(rows)} sequences of {cfg.corpus.ctx} tokens; "
                         f"need more than corpus.n_eval_seqs={n_eval}")
    eval_rows, train_rows = rows[:n_eval], rows[n_eval:]
    if cfg.corpus.max_train_seqs:
        train_rows = train_rows[: cfg.corpus.max_train_seqs]
    attrs = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id, "ctx": cfg.corpus.ctx}
    for name, data in ((TOKENS_TRAIN, train_rows), (TOKENS_EVAL, eval_rows)):
        root.remove(name)
        arr = create_array(root.zarr_store(name), None, data.shape, "int32",
                           (max(1, min(len(data), 65536 // cfg.corpus.ctx)), cfg.corpus.ctx),
                           attributes=attrs, compress=True)
        arr[:] = data
    return UnitResult(outputs=[TOKENS_TRAIN, TOKENS_EVAL],
                      metrics={"n_docs": n_docs, "n_train_seqs": int(len(train_rows)),
                               "n_eval_seqs": int(len(eval_rows)), "n_train_tokens": int(train_rows.size)})


def n_train_seqs(root: StorageRoot) -> int | None:
    """How many train sequences the root holds; None before tokenize has written them."""
    if not root.exists(f"{TOKENS_TRAIN}/zarr.json"):
        return None
    return zarr.open_array(store=root.zarr_store(TOKENS_TRAIN, read_only=True), mode="r").shape[0]
