"""Where each site lives inside a Hugging Face model, and one hook mechanism to read or replace it.

Capture (extract, evaluate) and splice (delta loss) are the same hook: a function that sees the site's
tensor [batch, pos, width] and returns None (leave it) or a replacement.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

# site -> (module path template, "output" of that module or "input" to it), per architecture.
SITE_TABLE: dict[str, dict[str, tuple[str, str]]] = {
    "gemma2": {
        "res": ("model.layers.{L}", "output"),
        "att": ("model.layers.{L}.self_attn.o_proj", "input"),
        "mlp": ("model.layers.{L}.post_feedforward_layernorm", "output"),
    },
    "llama": {
        "res": ("model.layers.{L}", "output"),
        "att": ("model.layers.{L}.self_attn.o_proj", "input"),
        "mlp": ("model.layers.{L}.mlp", "output"),
    },
    "gpt2": {
        "res": ("transformer.h.{L}", "output"),
        "att": ("transformer.h.{L}.attn.c_proj", "input"),
        "mlp": ("transformer.h.{L}.mlp", "output"),
    },
}
SITE_TABLE["gemma"] = SITE_TABLE["llama"]
SITE_TABLE["qwen2"] = SITE_TABLE["llama"]
SITE_TABLE["gemma3_text"] = SITE_TABLE["gemma2"]

# The TransformerLens hook names SAELens uses for each site.
TL_HOOKS = {"res": "blocks.{L}.hook_resid_post", "att": "blocks.{L}.attn.hook_z", "mlp": "blocks.{L}.hook_mlp_out"}

SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def site_table(model_type: str) -> dict[str, tuple[str, str]]:
    try:
        return SITE_TABLE[model_type]
    except KeyError:
        raise ValueError(f"model type {model_type!r} has no site table (known: {sorted(SITE_TABLE)})") from None


def site_width(hf_config, site: str) -> int:
    if site == "att":
        heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        return heads * head_dim
    return hf_config.hidden_size


def n_layers(hf_config) -> int:
    return hf_config.num_hidden_layers


def _module(model: torch.nn.Module, site: str, layer: int) -> tuple[torch.nn.Module, str]:
    template, where = site_table(model.config.model_type)[site]
    return model.get_submodule(template.format(L=layer)), where


def layer_module(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The whole decoder layer (its output is the residual stream after it)."""
    return _module(model, "res", layer)[0]


def site_module(model: torch.nn.Module, site: str, layer: int) -> torch.nn.Module:
    """The module whose output (res, mlp) or input (att) is the site."""
    return _module(model, site, layer)[0]


class _StopForward(Exception):
    """Raised by a hook once the last requested layer has run: reading sites needs no later layer and no logits
    (Gemma 2's 256k-vocabulary unembedding is a large share of its forward pass)."""


def forward_until(model: torch.nn.Module, input_ids: torch.Tensor, last_layer: int) -> None:
    """The model's forward pass up to and including `last_layer`; hooks installed before this call run."""
    def stop(module, args, output):
        raise _StopForward

    handle = layer_module(model, last_layer).register_forward_hook(stop)
    try:
        model.base_model(input_ids=input_ids)
    except _StopForward:
        pass
    finally:
        handle.remove()


@contextlib.contextmanager
def site_hooks(model: torch.nn.Module, fns: dict[tuple[str, int], SiteFn]) -> Iterator[None]:
    """Install one hook per (site, layer) for the duration of the block."""
    handles = []
    try:
        for (site, layer), fn in fns.items():
            module, where = _module(model, site, layer)
            if where == "input":
                def pre_hook(mod, args, fn=fn):
                    new = fn(args[0])
                    return None if new is None else (new, *args[1:])
                handles.append(module.register_forward_pre_hook(pre_hook))
            else:
                def post_hook(mod, args, output, fn=fn):
                    hidden = output[0] if isinstance(output, tuple) else output
                    new = fn(hidden)
                    if new is None:
                        return None
                    return (new, *output[1:]) if isinstance(output, tuple) else new
                handles.append(module.register_forward_hook(post_hook))
        yield
    finally:
        for h in handles:
            h.remove()


class ActivationCapture:
    """Records every requested (site, layer) of one forward pass, detached."""

    def __init__(self, keys: list[tuple[str, int]]):
        self.keys = keys
        self.values: dict[tuple[str, int], torch.Tensor] = {}

    def hooks(self) -> dict[tuple[str, int], SiteFn]:
        def make(key):
            def fn(t: torch.Tensor):
                self.values[key] = t.detach()
                return None
            return fn
        return {k: make(k) for k in self.keys}
