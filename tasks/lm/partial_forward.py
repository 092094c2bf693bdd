"""The forward pass from decoder layer L on, so that many SAEs spliced at one (site, layer) share the rest.

Layers below L compute the same thing for every SAE of a (site, layer) and for the clean pass. So the clean
pass records what the model's own forward hands each decoder layer from L on: the hidden state entering the
first of them and each layer's other arguments (the attention mask of its kind, full or sliding-window; the
rotary position embeddings; the position ids). `forward_from_layer` replays those layers on the recorded
arguments, then the final norm, the unembedding and the final logit soft-capping. The masks and positions
are the library's own objects from the clean pass, never rebuilt here, so they are the full forward's by
construction in every family of `tasks.lm.sites.SITE_TABLE` (Gemma 3's per-layer-kind rotary tables too).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

from tasks.lm.sites import layer_module, n_layers, site_hooks

# The norm between the last decoder layer and the unembedding, per architecture.
FINAL_NORM = {"gemma2": "model.norm", "gemma3_text": "model.norm", "gemma": "model.norm", "llama": "model.norm",
              "qwen2": "model.norm", "gpt2": "transformer.ln_f"}
# Arguments that would carry state from one replay into the next.
_CACHE_ARGS = ("past_key_values", "past_key_value", "layer_past")


@dataclass
class LayerInputs:
    """What one forward pass gave decoder layers `first`.. : the hidden state entering `first`, and per layer
    its other positional and keyword arguments."""
    first: int
    hidden: torch.Tensor | None = None
    calls: dict[int, tuple[tuple, dict]] = field(default_factory=dict)


def first_changed_layer(site: str, layer: int) -> int:
    """The first decoder layer a splice at (site, layer) changes: the residual stream after layer L is the
    input of layer L+1, while the attention and MLP outputs sit inside layer L."""
    return layer + 1 if site == "res" else layer


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    try:
        return model.get_submodule(FINAL_NORM[model.config.model_type])
    except KeyError:
        raise ValueError(f"model type {model.config.model_type!r} has no final norm entry "
                         f"(known: {sorted(FINAL_NORM)})") from None


@contextlib.contextmanager
def recording_layer_inputs(model: torch.nn.Module, first: int) -> Iterator[LayerInputs]:
    """Within the block each forward pass records decoder layers `first`..'s inputs (the latest pass wins).

    Run the recorded pass with `use_cache=False`: a KV cache handed to the layers would be extended again by
    every replay.
    """
    recorded = LayerInputs(first)

    def recorder(index: int):
        def pre_hook(module, args, kwargs):
            kwargs = dict(kwargs)
            if any(kwargs.get(name) is not None for name in _CACHE_ARGS):
                raise ValueError("recording_layer_inputs: the forward pass carries a KV cache; run it with "
                                 "use_cache=False")
            hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
            if index == first:
                recorded.hidden = hidden
            recorded.calls[index] = (rest, kwargs)
        return pre_hook

    handles = []
    try:
        for index in range(first, n_layers(model.config)):
            handles.append(layer_module(model, index).register_forward_pre_hook(recorder(index), with_kwargs=True))
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def unembed(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from the last decoder layer's output: final norm, unembedding, and the final logit
    soft-capping where the model has it (Gemma 2), in the order and arithmetic of its own forward."""
    logits = model.get_output_embeddings()(final_norm(model)(hidden))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = logits / cap
        logits = torch.tanh(logits)
        logits = logits * cap
    return logits


def forward_from_layer(model: torch.nn.Module, inputs: LayerInputs, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of layers `inputs.first`.. run on `hidden` (default: the recorded one) with the recorded
    arguments; hooks on those layers run as in the full forward. Equals the full forward's logits when the
    layers below `first` would have produced `hidden`."""
    state = inputs.hidden if hidden is None else hidden
    if state is None:
        raise ValueError(f"forward_from_layer: no hidden state entering layer {inputs.first} was recorded or given")
    for index in range(inputs.first, n_layers(model.config)):
        args, kwargs = inputs.calls[index]
        out = layer_module(model, index)(state, *args, **kwargs)
        state = out[0] if isinstance(out, tuple) else out
    return unembed(model, state)


def logits_with_site_replaced(model: torch.nn.Module, inputs: LayerInputs, site: str, layer: int,
                              replacement: torch.Tensor) -> torch.Tensor:
    """Logits with (site, layer)'s tensor replaced by `replacement`, replaying from the layer the site
    changes first (`inputs` recorded from `first_changed_layer(site, layer)`)."""
    if inputs.first != first_changed_layer(site, layer):
        raise ValueError(f"inputs recorded from layer {inputs.first}, but ({site}, {layer}) first changes "
                         f"layer {first_changed_layer(site, layer)}")
    if site == "res":
        return forward_from_layer(model, inputs, replacement)
    with site_hooks(model, {(site, layer): lambda t: replacement}):
        return forward_from_layer(model, inputs)
