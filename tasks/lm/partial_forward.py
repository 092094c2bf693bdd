"""The forward pass from decoder layer L on, so that many SAEs spliced at one (site, layer) share the rest.

Layers below L compute the same thing for every SAE of a (site, layer) and for the clean pass. So the clean
pass records what the model's own forward hands each decoder layer from L on: the hidden state entering the
first of them and each layer's other arguments (the attention mask of its kind, full or sliding-window; the
rotary position embeddings; the position ids), and for an MLP splice the residual stream layer L adds the
MLP's output to. `forward_from_layer` replays those layers on the recorded arguments, then the final norm,
the unembedding and the final logit soft-capping. The masks and positions
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
# The module whose input is the residual stream a decoder layer adds its MLP site's tensor to, last thing
# in the layer (`residual + mlp_out` in each family's code): so an MLP splice needs no part of layer L rerun.
MLP_RESIDUAL = {"gemma2": "model.layers.{L}.pre_feedforward_layernorm",
                "gemma3_text": "model.layers.{L}.pre_feedforward_layernorm",
                "gemma": "model.layers.{L}.post_attention_layernorm", "llama": "model.layers.{L}.post_attention_layernorm",
                "qwen2": "model.layers.{L}.post_attention_layernorm", "gpt2": "transformer.h.{L}.ln_2"}
# Arguments that would carry state from one replay into the next.
_CACHE_ARGS = ("past_key_values", "past_key_value", "layer_past")


@dataclass
class LayerInputs:
    """What one forward pass gave decoder layers `first`.. : the hidden state entering `first`, and per layer
    its other positional and keyword arguments."""
    first: int
    hidden: torch.Tensor | None = None
    calls: dict[int, tuple[tuple, dict]] = field(default_factory=dict)
    #: for an MLP splice: the residual stream layer L adds the MLP site's tensor to
    mlp_residual: torch.Tensor | None = None


def first_changed_layer(site: str, layer: int) -> int:
    """The first decoder layer a splice at (site, layer) has to run: the residual stream after layer L and
    layer L's output with its MLP part replaced both enter layer L+1; the attention site sits inside L."""
    return layer if site == "att" else layer + 1


def _family_module(model: torch.nn.Module, table: dict[str, str], what: str, layer: int = 0) -> torch.nn.Module:
    try:
        return model.get_submodule(table[model.config.model_type].format(L=layer))
    except KeyError:
        raise ValueError(f"model type {model.config.model_type!r} has no {what} entry (known: {sorted(table)})") from None


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    return _family_module(model, FINAL_NORM, "final norm")


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


@contextlib.contextmanager
def recording_splice_inputs(model: torch.nn.Module, site: str, layer: int) -> Iterator[LayerInputs]:
    """`recording_layer_inputs` from the first layer a splice at (site, layer) runs, and for the MLP site
    the residual stream its tensor is added to."""
    with recording_layer_inputs(model, first_changed_layer(site, layer)) as inputs:
        def pre_hook(module, args):
            inputs.mlp_residual = args[0]

        handle = None
        if site == "mlp":
            handle = _family_module(model, MLP_RESIDUAL, "MLP residual", layer).register_forward_pre_hook(pre_hook)
        try:
            yield inputs
        finally:
            if handle is not None:
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
    """Logits with (site, layer)'s tensor replaced by `replacement`, from `recording_splice_inputs(model,
    site, layer)`'s record of the clean pass."""
    if inputs.first != first_changed_layer(site, layer):
        raise ValueError(f"inputs recorded from layer {inputs.first}, but a splice at ({site}, {layer}) runs from "
                         f"layer {first_changed_layer(site, layer)}")
    if site == "res":
        return forward_from_layer(model, inputs, replacement)
    if site == "mlp":
        if inputs.mlp_residual is None:
            raise ValueError(f"no residual stream recorded for an MLP splice at layer {layer}")
        return forward_from_layer(model, inputs, inputs.mlp_residual + replacement)
    with site_hooks(model, {(site, layer): lambda t: replacement}):
        return forward_from_layer(model, inputs)
