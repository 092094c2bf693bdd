"""The output tokens an SAE latent's decoder row boosts and suppresses: its direct effect on the logits.

This is the "logit lens" of a feature as SAELens and Neuronpedia show it: the decoder row (raw units, as the
folded SAE stores it) mapped to the residual stream and multiplied by the unembedding, W_dec[i] @ W_U, with
the final norm's weight folded into W_U the way TransformerLens folds it (`fold_ln`). A norm is not defined
on a direction (RMS normalisation rescales by the whole residual vector, which a single row does not have),
so only its elementwise affine part applies: Gemma's (1 + weight), Llama's and Qwen's weight, and for
GPT-2's LayerNorm the centring and weight (TransformerLens' `center_unembed`); the LayerNorm bias and
Gemma 2's final logit soft-capping (monotonic per logit) are left out. Sites that are not already the
residual stream go there first: the attention site (heads' output before o_proj) through o_proj's weight,
and for Gemma 2 and 3 the post-attention norm's scale, as Neuronpedia maps attention-output SAEs (W_dec W_O).
"""
from __future__ import annotations

import torch

from tasks.lm.partial_forward import final_norm
from tasks.lm.sites import site_module

# Families whose RMSNorm multiplies by (1 + weight) rather than by weight.
_ONE_PLUS_WEIGHT = {"gemma", "gemma2", "gemma3_text"}
# Families that normalise the attention output before adding it to the residual stream.
_ATTN_OUT_NORM = {"gemma2": "model.layers.{L}.post_attention_layernorm",
                  "gemma3_text": "model.layers.{L}.post_attention_layernorm"}


def _norm_scale(model: torch.nn.Module, norm: torch.nn.Module) -> torch.Tensor:
    weight = norm.weight.detach().float()
    return weight + 1.0 if model.config.model_type in _ONE_PLUS_WEIGHT else weight


def to_residual(model: torch.nn.Module, site: str, layer: int, dirs: torch.Tensor) -> torch.Tensor:
    """Directions [n, site width] at (site, layer) as directions [n, d_model] of the residual stream."""
    dirs = dirs.float()
    if site != "att":
        return dirs
    o_proj = site_module(model, site, layer)
    weight_dtype = next(o_proj.parameters()).dtype
    # a linear map's action on a direction: f(d) - f(0) drops any bias, for Linear and GPT-2's Conv1D alike
    mapped = o_proj(dirs.to(weight_dtype)).float() - o_proj(torch.zeros_like(dirs[:1]).to(weight_dtype)).float()
    norm = _ATTN_OUT_NORM.get(model.config.model_type)
    if norm is not None:
        mapped = mapped * _norm_scale(model, model.get_submodule(norm.format(L=layer)))
    return mapped


def direction_logits(model: torch.nn.Module, site: str, layer: int, dirs: torch.Tensor) -> torch.Tensor:
    """Logit weights [n, vocab] of directions [n, site width] at (site, layer)."""
    resid = to_residual(model, site, layer, dirs)
    norm = final_norm(model)
    if isinstance(norm, torch.nn.LayerNorm):
        resid = resid - resid.mean(-1, keepdim=True)
    unembed = model.get_output_embeddings().weight.detach().float()
    return (resid * _norm_scale(model, norm)) @ unembed.T


def output_tokens(model: torch.nn.Module, site: str, layer: int, w_dec: torch.Tensor, n: int, chunk: int = 1024
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every decoder row [d_sae, site width]: the `n` most boosted token ids and their logit weights
    (largest first) and the `n` most suppressed (most negative first), as CPU tensors [d_sae, n]. Rows go
    `chunk` at a time, so a 16k-latent SAE on a 256k vocabulary never holds all its logits at once."""
    n = min(n, model.get_output_embeddings().weight.shape[0])
    w_dec = w_dec.detach()
    parts = []
    for start in range(0, w_dec.shape[0], chunk):
        logits = direction_logits(model, site, layer, w_dec[start:start + chunk])
        top, bottom = torch.topk(logits, n, dim=1), torch.topk(logits, n, dim=1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    return tuple(torch.cat([p[i] for p in parts]).cpu() for i in range(4))  # type: ignore[return-value]
