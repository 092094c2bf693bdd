"""Randomly initialised models of a known architecture (tasks/capacity.KNOWN_CONFIGS), for timings at a real
model's shapes where its weights cannot be had (none are downloadable here, and the lent GPU machine reaches
no network): throughput needs the shapes, not the weights. The tokenizer is the embedded tiny one; its ids are
a prefix of the vocabulary, which changes no shape."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma2Config

from tasks.capacity import KNOWN_CONFIGS
from tasks.lm.model import resolve_model_path

# the Gemma 2 2B/9B config.json fields that KNOWN_CONFIGS leaves out (they change no FLOP count)
GEMMA2_FIXED = dict(query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
                    attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh")


def random_model(name: str, dtype: str, folder: Path, device: str = "cpu", **overrides) -> str:
    """Saves the model to `folder` and returns its path. Initialised on `device` (a 2.6B model's random init
    takes seconds on a GPU, minutes on a few cores); `overrides` replace config fields (a small model for a
    CPU dry run of the same code)."""
    fields = {k: v for k, v in KNOWN_CONFIGS[name].items() if k != "model_type"}
    config = Gemma2Config(**{**GEMMA2_FIXED, **fields, **overrides})
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_path("embedded:tiny-gemma2")).save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return str(folder)
