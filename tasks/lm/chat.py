"""Conversations as token ids through a model's own chat template: the instruction-tuned variant's tuning
(tasks/lm/embedded/it_model.py) and the evaluation of SAEs on an instruction-tuned model (tasks/lm/eval_text.py)
format chats the same way."""
from __future__ import annotations


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_token_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The conversation as its template writes it, tokenized without the template's leading BOS: rows are
    packed as the corpus's are, each starting with one BOS of its own."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[1:] if ids and ids[0] == tokenizer.bos_token_id else ids
