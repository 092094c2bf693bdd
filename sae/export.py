"""Release formats of a folded SAE: Gemma Scope's params.npz and SAELens v6 (cfg.json + safetensors).

Both hold the same five tensors W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold, so
an SAE from this project loads wherever Gemma Scope's releases do. Paths are local; callers stage remote
copies themselves.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .jumprelu import JumpReLUSAE

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_VERSION = "6.0.0"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _cpu_tensors(sae: JumpReLUSAE) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in sae.state_tensors().items()}


def save_gemma_scope_npz(sae: JumpReLUSAE, path: str | Path) -> None:
    """Gemma Scope's format has no flag for a pre-encoder bias, so only a folded SAE can be written."""
    if sae.apply_b_dec_to_input:
        raise ValueError("params.npz holds folded SAEs only (apply_b_dec_to_input=False); call folded(C) first")
    arrays = {name: t.numpy() for name, t in _cpu_tensors(sae).items()}
    with open(path, "wb") as fh:  # a file handle, so numpy does not append ".npz" to the name
        np.savez(fh, **arrays)


def load_gemma_scope_npz(path: str | Path) -> JumpReLUSAE:
    with np.load(path) as data:
        tensors = {name: torch.from_numpy(np.asarray(data[name], dtype=np.float32)) for name in JumpReLUSAE.PARAM_NAMES}
    return JumpReLUSAE.from_tensors(tensors, apply_b_dec_to_input=False)


def saelens_cfg(
    sae: JumpReLUSAE,
    *,
    model_name: str,
    hook_name: str,
    context_size: int,
    prepend_bos: bool = True,
    dtype: str = "float32",
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The cfg.json dict SAELens v6 writes for an inference JumpReLU SAE (SAEConfig.to_dict())."""
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
    return {
        "architecture": "jumprelu",
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }


def save_saelens(
    sae: JumpReLUSAE,
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
    (DESIGN section 3); `extra_metadata` (dataset_path, say) is merged over the defaults.
    """
    cfg = saelens_cfg(sae, model_name=model_name, hook_name=hook_name, context_size=context_size,
                      prepend_bos=prepend_bos, dtype=dtype, extra_metadata=extra_metadata)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.to(_DTYPES[dtype]).contiguous() for name, t in _cpu_tensors(sae).items()}
    save_file(tensors, str(folder / SAELENS_WEIGHTS))
    (folder / SAELENS_CFG).write_text(json.dumps(cfg, indent=2) + "\n")


def load_saelens(folder: str | Path) -> tuple[JumpReLUSAE, dict[str, Any]]:
    """Load a SAELens v6 JumpReLU SAE saved by save_saelens (or SAELens itself) as float32."""
    folder = Path(folder)
    cfg = json.loads((folder / SAELENS_CFG).read_text())
    if cfg.get("architecture") != "jumprelu":
        raise ValueError(f"not a JumpReLU SAE: architecture={cfg.get('architecture')!r}")
    if cfg.get("normalize_activations", "none") != "none":
        raise ValueError(f"normalize_activations={cfg['normalize_activations']!r} is not supported; fold it first")
    tensors = load_file(str(folder / SAELENS_WEIGHTS))
    sae = JumpReLUSAE.from_tensors(tensors, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)))
    if (sae.d_in, sae.d_sae) != (cfg.get("d_in"), cfg.get("d_sae")):
        raise ValueError(f"cfg.json says d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')}; "
                         f"weights are {sae.d_in} x {sae.d_sae}")
    return sae, cfg
