"""Loading the language model and its tokenizer: one code path for the embedded tiny model, a local
folder, or a hub id such as google/gemma-2-2b."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tasks.config import ModelConfig
from tasks.lm.embedded import resolve_embedded

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name_or_path: str) -> str:
    """Embedded names build (once) and map to their folder; a path-like name must exist; anything else
    is a hub id left to transformers."""
    if name_or_path.startswith("embedded:"):
        path = resolve_embedded(name_or_path)
        if path is None:
            raise ValueError(f"model.name_or_path: unknown embedded model {name_or_path!r}")
        return str(path)
    p = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or p.exists() or name_or_path.count("/") > 1
    if looks_local:
        if not p.is_dir():
            raise FileNotFoundError(f"model.name_or_path: model folder does not exist: {name_or_path} (a model "
                                    f"given as a local folder must exist at this path on every Ray node)")
        return str(p.resolve())
    return name_or_path


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_config(cfg: ModelConfig):
    return AutoConfig.from_pretrained(resolve_model_path(cfg.name_or_path), revision=cfg.revision)


def load_tokenizer(cfg: ModelConfig):
    return AutoTokenizer.from_pretrained(resolve_model_path(cfg.name_or_path), revision=cfg.revision)


@functools.lru_cache(maxsize=2)
def _load_model_cached(path: str, revision: str | None, dtype: str, device: str):
    kwargs = dict(revision=revision, dtype=_DTYPES[dtype])
    # Gemma 2's logit soft-capping is only exact in the eager attention implementation.
    kwargs["attn_implementation"] = "eager"
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.to(device).eval()
    model.requires_grad_(False)
    return model


def load_model(cfg: ModelConfig):
    """The model in eval mode, cached per worker process so a worker running several units loads it once."""
    device = str(pick_device(cfg.device))
    return _load_model_cached(resolve_model_path(cfg.name_or_path), cfg.revision, cfg.dtype, device)


def special_token_ids(tokenizer) -> set[int]:
    """Positions holding these are never activation rows nor predicted targets (as Gemma Scope)."""
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return {int(i) for i in ids if i is not None}


def keep_mask(tokens: np.ndarray, special: set[int]) -> np.ndarray:
    """Activation rows and spliced positions are tokens that are not BOS, EOS or padding (as Gemma Scope)."""
    return ~np.isin(tokens, np.fromiter(special, dtype=tokens.dtype))
