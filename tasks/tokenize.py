"""Stage 1: documents -> fixed-length token sequences, each starting with BOS, in shuffled order.

Shuffling sequence order here is what lets every later contiguous range (a shard, a shuffle bucket) be a
random sample of the corpus.
"""
from __future__ import annotations

import numpy as np

from storage.arrays import create_array
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.corpus import expand_paths, read_documents
from tasks.model import load_tokenizer

TOKENS_TRAIN = "tokens/train"
TOKENS_EVAL = "tokens/eval"


def pack_sequences(docs_ids: list[list[int]], ctx: int, bos: int, eos: int) -> np.ndarray:
    """Concatenate documents (each closed by EOS) and cut into rows of BOS + (ctx-1) tokens; the
    incomplete tail is dropped."""
    stream = np.fromiter((t for ids in docs_ids for t in (*ids, eos)), dtype=np.int64)
    body = ctx - 1
    n = len(stream) // body
    rows = np.empty((n, ctx), dtype=np.int32)
    rows[:, 0] = bos
    rows[:, 1:] = stream[: n * body].reshape(n, body)
    return rows


def tokenize_corpus(cfg: StagesConfig, root: StorageRoot) -> dict:
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
    return {"outputs": [TOKENS_TRAIN, TOKENS_EVAL],
            "metrics": {"n_docs": n_docs, "n_train_seqs": int(len(train_rows)), "n_eval_seqs": int(len(eval_rows)),
                        "n_train_tokens": int(train_rows.size)}}
