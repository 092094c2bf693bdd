"""Release formats of a folded SAE: Gemma Scope's params.npz and SAELens v6 (cfg.json + safetensors).

A JumpReLU SAE is the five tensors W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold in
both, so it loads wherever Gemma Scope's releases do. A ReLU SAE is a JumpReLU SAE with zero thresholds
(so it, too, has a params.npz) and SAELens's "standard" architecture; a TopK SAE exists only as SAELens's
"topk", with `k` in cfg.json. Paths are local; callers stage remote copies themselves.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .base import SparseAutoencoder
from .jumprelu import JumpReLUSAE
from .registry import from_saelens_name

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_VERSION = "6.0.0"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _cpu_tensors(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in sae.state_tensors().items()}


def save_gemma_scope_npz(sae: SparseAutoencoder, path: str | Path) -> None:
    """Gemma Scope's format has no flag for a pre-encoder bias, so only a folded SAE can be written."""
    if sae.apply_b_dec_to_input:
        raise ValueError("params.npz holds folded SAEs only (apply_b_dec_to_input=False); call folded(C) first")
    if not sae.gemma_scope_form:  # params.npz is a JumpReLU SAE; ReLU is one with zero thresholds
        raise ValueError(f"params.npz holds JumpReLU SAEs; a {sae.architecture} SAE has no such form")
    arrays = {name: t.numpy() for name, t in _cpu_tensors(sae).items()}
    arrays.setdefault("threshold", np.zeros(sae.d_sae, dtype=np.float32))
    with open(path, "wb") as fh:  # a file handle, so numpy does not append ".npz" to the name
        np.savez(fh, **arrays)


def load_gemma_scope_npz(path: str | Path) -> JumpReLUSAE:
    with np.load(path) as data:
        tensors = {name: torch.from_numpy(np.asarray(data[name], dtype=np.float32)) for name in JumpReLUSAE.PARAM_NAMES}
    return JumpReLUSAE.from_tensors(tensors, apply_b_dec_to_input=False)


def saelens_cfg(
    sae: SparseAutoencoder,
    *,
    model_name: str,
    hook_name: str,
    context_size: int,
    prepend_bos: bool = True,
    dtype: str = "float32",
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The cfg.json dict SAELens v6 writes for an inference SAE of this architecture (SAEConfig.to_dict())."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_VERSION,
        "sae_lens_training_version": SAELENS_VERSION,
        "model_name": model_name,
        "model_class_name": "HookedTransformer",
        "hook_name": hook_name,
        "hook_head_index": None,
        "context_size": context_size,
        "prepend_bos": prepend_bos,
        "dataset_path": "",
        "exclude_special_tokens": True,
        "model_from_pretrained_kwargs": {},
    }
    metadata.update(extra_metadata or {})
    cfg: dict[str, Any] = {
        "architecture": sae.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    cfg.update(sae.saelens_fields())
    return cfg


def save_saelens(
    sae: SparseAutoencoder,
    folder: str | Path,
    *,
    model_name: str,
    hook_name: str,
    context_size: int,
    prepend_bos: bool = True,
    dtype: str = "float32",
    extra_metadata: dict[str, Any] | None = None,
) -> None:
    """Write cfg.json and sae_weights.safetensors as SAE.save_model does in SAELens v6.

    `exclude_special_tokens` is true in the metadata because activations here skip BOS, EOS and padding
    (docs/architecture.md, "The run layout"); `extra_metadata` (dataset_path, say) is merged over the defaults.
    """
    cfg = saelens_cfg(sae, model_name=model_name, hook_name=hook_name, context_size=context_size,
                      prepend_bos=prepend_bos, dtype=dtype, extra_metadata=extra_metadata)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.to(_DTYPES[dtype]).contiguous() for name, t in _cpu_tensors(sae).items()}
    save_file(tensors, str(folder / SAELENS_WEIGHTS))
    (folder / SAELENS_CFG).write_text(json.dumps(cfg, indent=2) + "\n")


def _fold_decoder_norms(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAELens's `rescale_acts_by_decoder_norm` encodes with z * ||W_dec_i|| and decodes f / ||W_dec_i||;
    moving the norms into W_enc, b_enc and W_dec gives the same SAE with unit decoder rows (a no-op when the
    rows already are unit, as SAELens's save_inference_model leaves them while still writing the flag)."""
    norms = tensors["W_dec"].float().norm(dim=1)
    out = dict(tensors)
    out["W_enc"] = tensors["W_enc"].float() * norms
    out["b_enc"] = tensors["b_enc"].float() * norms
    out["W_dec"] = tensors["W_dec"].float() / norms[:, None]
    return out


def load_saelens(folder: str | Path) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Load a SAELens v6 JumpReLU, TopK or standard (ReLU) SAE, saved by save_saelens or SAELens, as float32."""
    folder = Path(folder)
    cfg = json.loads((folder / SAELENS_CFG).read_text())
    where = folder / SAELENS_CFG
    try:
        cls = from_saelens_name(cfg.get("architecture"))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if cfg.get("normalize_activations", "none") != "none":
        raise ValueError(f"normalize_activations={cfg['normalize_activations']!r} is not supported; fold it first")
    hyper = cls.hyper_from_saelens(cfg, str(where))
    tensors = load_file(str(folder / SAELENS_WEIGHTS))
    if cfg.get("rescale_acts_by_decoder_norm"):
        tensors = _fold_decoder_norms(tensors)
    sae = cls.from_tensors(tensors, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)), **hyper)
    if (sae.d_in, sae.d_sae) != (cfg.get("d_in"), cfg.get("d_sae")):
        raise ValueError(f"cfg.json says d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')}; "
                         f"weights are {sae.d_in} x {sae.d_sae}")
    return sae, cfg
