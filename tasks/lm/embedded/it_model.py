"""The instruction-tuned variant of the tiny model: the base model tuned briefly on chats from the grammar,
formatted with a chat template of its own, and saved with that template as a standard Hugging Face folder.

Gemma Scope evaluated its base-model SAEs on Gemma 2 9B IT; this variant lets the embedded default show the
same check. The template writes turns as `user: ...` / `model: ...` lines (Gemma's role names) in words the
tiny tokenizer already has, as Gemma's IT template uses tokens its base vocabulary already holds.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import transformers

from tasks.lm.chat import chat_token_ids
from tasks.lm.embedded.grammar import read_chats
from tasks.lm.embedded.spec import EMBEDDED_VERSION, IT_LR, IT_SEED, IT_STEPS, STATS_FILE, TRAIN_CTX
from tasks.lm.embedded.tiny_model import deterministic_torch, heldout_ce, special_ids, train_steps
from tasks.lm.embedded.tokenizer import save_tokenizer
from tasks.lm.packing import pack_sequences

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}model:{% endif %}"
)


def _chat_rows(tokenizer, chats_path: Path) -> torch.Tensor:
    ids = [chat_token_ids(tokenizer, m) for m in read_chats(chats_path)]
    rows = pack_sequences(ids, TRAIN_CTX, tokenizer.bos_token_id, tokenizer.eos_token_id)
    return torch.from_numpy(rows.astype("int64"))


def tune_instruction_model(base_dir: Path, chats_path: Path, eval_chats_path: Path, out_dir: Path, *,
                           seed: int = IT_SEED, steps: int = IT_STEPS, batch_size: int = 16, lr: float = IT_LR,
                           warmup_steps: int = 10, threads: int = 2,
                           log: Callable[[str], None] | None = None) -> dict:
    """A step count, not a time budget, so the same inputs give the same weights. Its stats record the
    held-out chat loss before and after tuning: the variant has learnt the chat format."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    train_rows, held_rows = _chat_rows(tokenizer, chats_path), _chat_rows(tokenizer, eval_chats_path)
    special = torch.tensor(special_ids(tokenizer))
    with deterministic_torch(threads):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                                  attn_implementation="eager").eval()
        base_loss, n_held = heldout_ce(model, held_rows, special, batch_size)
        seconds = train_steps(model, train_rows, steps=steps, batch_size=batch_size, lr=lr,
                              warmup_steps=warmup_steps, seed=seed, log=log)
        tuned_loss, _ = heldout_ce(model, held_rows, special, batch_size)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir)
    stats = {"base_chat_loss": base_loss, "tuned_chat_loss": tuned_loss, "n_heldout_tokens": n_held,
             "train_seconds": seconds, "steps": steps, "batch_size": batch_size, "ctx": TRAIN_CTX, "lr": lr,
             "seed": seed, "n_train_rows": int(len(train_rows)), "version": EMBEDDED_VERSION}
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats
