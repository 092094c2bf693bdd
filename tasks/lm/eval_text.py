"""The held-out rows of a further evaluation model (`evaluate.models`): its own text, as conversations
through its chat template or as plain documents, packed like the corpus into rows of corpus.ctx tokens that
each start with BOS. Read by the evaluate unit itself: a few dozen rows, so no stage of its own."""
from __future__ import annotations

from typing import Any

import numpy as np

from storage.errors import InputError
from tasks.config import EvalModelConfig
from tasks.lm.chat import chat_token_ids
from tasks.lm.corpus import expand_path_list, read_conversations, read_documents
from tasks.lm.packing import pack_sequences


def eval_model_tokens(m: EvalModelConfig, index: int, tokenizer, ctx: int,
                      storage_options: dict[str, Any]) -> np.ndarray:
    """[n, ctx] int32 with n = m.n_seqs, or fewer when the text packs into fewer rows (at least one)."""
    field = f"evaluate.models[{index}].paths"
    docs: list[list[int]] = []
    for path in expand_path_list(m.paths, storage_options, field):
        if m.chat:
            docs.extend(chat_token_ids(tokenizer, c) for c in read_conversations(path, m.messages_field, storage_options))
        else:
            texts = list(read_documents(path, m.text_field, storage_options))
            docs.extend(tokenizer(texts, add_special_tokens=False)["input_ids"])
    rows = pack_sequences(docs, ctx, tokenizer.bos_token_id, tokenizer.eos_token_id)[: m.n_seqs]
    if len(rows) == 0:
        raise InputError(f"{field}: too little text for one row of corpus.ctx={ctx} tokens "
                         f"({sum(len(d) for d in docs):,} tokens in {len(docs):,} documents)", field=field)
    return rows
