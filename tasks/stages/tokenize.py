"""Stage 1: documents -> fixed-length token sequences, each starting with BOS, in shuffled order.

Shuffling sequence order here is what lets every later contiguous range (a shard, a shuffle bucket) be a
random sample of the corpus.
"""
from __future__ import annotations

import numpy as np
import zarr

from storage.arrays import create_array
from storage.errors import InputError
from storage.fingerprint import fingerprint
from storage.layout import TOKENS_EVAL, TOKENS_TRAIN
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.lm.corpus import expand_paths, read_documents
from tasks.lm.model import keep_mask, load_tokenizer, special_token_ids
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
        raise InputError(f"model.name_or_path: tokenizer of {cfg.model.name_or_path} has no BOS/EOS token",
                         field="model.name_or_path")
    docs_ids: list[list[int]] = []
    paths = expand_paths(cfg.corpus, cfg.storage.storage_options)
    for path in paths:
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
    n_eval, ctx = cfg.corpus.n_eval_seqs, cfg.corpus.ctx
    if len(rows) < n_eval + 1:
        n_tokens = sum(len(d) for d in docs_ids)
        raise InputError(f"corpus.paths: too little text in {_describe(paths)}: {n_docs:,} documents, {n_tokens:,} "
                         f"tokens pack into {len(rows)} sequences of corpus.ctx={ctx}; need at least {n_eval + 1} "
                         f"(corpus.n_eval_seqs={n_eval} held out + 1 to train on), about {(n_eval + 1) * (ctx - 1):,} "
                         f"tokens: add text, or lower corpus.n_eval_seqs or corpus.ctx",
                         field="corpus.paths", sequences=int(len(rows)), needed=n_eval + 1)
    eval_rows, train_rows = rows[:n_eval], rows[n_eval:]
    if cfg.corpus.max_train_seqs:
        train_rows = train_rows[: cfg.corpus.max_train_seqs]
    n_act = int(keep_mask(train_rows, special_token_ids(tok)).sum())
    if n_act < cfg.sae.batch_size:
        # known here, not only when train opens its shuffled array after extract and shuffle ran
        capped = cfg.corpus.max_train_seqs is not None and len(train_rows) == cfg.corpus.max_train_seqs
        raise InputError(f"corpus.paths: the train split of {_describe(paths)} holds {n_act:,} activation rows "
                         f"({len(train_rows)} sequences, BOS/EOS/padding excluded), fewer than one batch "
                         f"(sae.batch_size={cfg.sae.batch_size}): {'raise corpus.max_train_seqs' if capped else 'add text'}, "
                         f"or lower sae.batch_size",
                         field="sae.batch_size", rows=n_act)
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


def _describe(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more file(s)"


def n_train_seqs(root: StorageRoot) -> int | None:
    """How many train sequences the root holds; None before tokenize has written them."""
    if not root.exists(f"{TOKENS_TRAIN}/zarr.json"):
        return None
    return zarr.open_array(store=root.zarr_store(TOKENS_TRAIN, read_only=True), mode="r").shape[0]
