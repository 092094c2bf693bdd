"""Release formats: Gemma Scope params.npz and SAELens v6 folders load back to the same SAE."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sae import JumpReLUSAE, load_gemma_scope_npz, load_saelens, save_gemma_scope_npz, save_saelens

NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def _folded_sae(d_in: int = 12, d_sae: int = 40) -> JumpReLUSAE:
    gen = torch.Generator().manual_seed(0)
    sae = JumpReLUSAE(d_in, d_sae, generator=gen)
    with torch.no_grad():
        sae.W_enc.add_(0.05 * torch.randn(d_in, d_sae, generator=gen))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=gen))
        sae.threshold.copy_(0.2 * torch.rand(d_sae, generator=gen))
    return sae.folded(3.0)


def _same_behaviour(a: JumpReLUSAE, b: JumpReLUSAE) -> None:
    x = 3.0 * torch.randn(128, a.d_in, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fa, fb = a.encode(x), b.encode(x)
        assert torch.equal(fa, fb)
        assert torch.count_nonzero(fa) > 0
        assert torch.equal(a.decode(fa), b.decode(fb))


def test_gemma_scope_npz_round_trip(tmp_path):
    sae = _folded_sae()
    path = tmp_path / "params.npz"
    save_gemma_scope_npz(sae, path)
    with np.load(path) as data:
        assert sorted(data.files) == sorted(NAMES)
        assert data["W_enc"].shape == (12, 40) and data["W_dec"].shape == (40, 12)
        assert data["b_enc"].shape == (40,) and data["b_dec"].shape == (12,) and data["threshold"].shape == (40,)
        assert all(data[n].dtype == np.float32 for n in NAMES)
    back = load_gemma_scope_npz(path)
    assert back.apply_b_dec_to_input is False
    for name in NAMES:
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    _same_behaviour(sae, back)


def test_npz_keeps_the_exact_file_name_and_refuses_unfolded_saes(tmp_path):
    sae = _folded_sae()
    path = tmp_path / "weights.bin"
    save_gemma_scope_npz(sae, path)
    assert path.exists() and not (tmp_path / "weights.bin.npz").exists()
    unfolded = JumpReLUSAE(4, 8)
    with pytest.raises(ValueError, match="folded"):
        save_gemma_scope_npz(unfolded, tmp_path / "bad.npz")


def test_saelens_round_trip_and_cfg_keys(tmp_path):
    sae = _folded_sae()
    folder = tmp_path / "width_40" / "lambda_0.001"
    save_saelens(sae, folder, model_name="google/gemma-2-2b", hook_name="blocks.3.hook_resid_post",
                 context_size=1024, extra_metadata={"dataset_path": "runs/tiny/tokens/train", "layer": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]

    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["device"]) == (12, 40, "float32", "cpu")
    assert cfg["apply_b_dec_to_input"] is False
    assert cfg["normalize_activations"] == "none" and cfg["reshape_activations"] == "none"
    meta = cfg["metadata"]
    assert int(meta["sae_lens_version"].split(".")[0]) >= 6
    assert int(meta["sae_lens_training_version"].split(".")[0]) >= 6
    assert meta["model_name"] == "google/gemma-2-2b"
    assert meta["hook_name"] == "blocks.3.hook_resid_post"
    assert meta["context_size"] == 1024 and meta["prepend_bos"] is True
    assert meta["hook_head_index"] is None and meta["model_from_pretrained_kwargs"] == {}
    assert meta["dataset_path"] == "runs/tiny/tokens/train" and meta["layer"] == 3

    with safe_open(str(folder / "sae_weights.safetensors"), framework="pt") as fh:
        assert sorted(fh.keys()) == sorted(NAMES)
        assert fh.get_tensor("W_enc").shape == (12, 40) and fh.get_tensor("W_enc").dtype == torch.float32

    back, cfg_back = load_saelens(folder)
    assert cfg_back == cfg
    assert back.apply_b_dec_to_input is False
    for name in NAMES:
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    _same_behaviour(sae, back)


def test_saelens_bfloat16_weights(tmp_path):
    sae = _folded_sae()
    save_saelens(sae, tmp_path, model_name="m", hook_name="blocks.0.hook_mlp_out", context_size=128,
                 dtype="bfloat16")
    with safe_open(str(tmp_path / "sae_weights.safetensors"), framework="pt") as fh:
        assert all(fh.get_tensor(n).dtype == torch.bfloat16 for n in NAMES)
    back, cfg = load_saelens(tmp_path)
    assert cfg["dtype"] == "bfloat16" and back.W_enc.dtype == torch.float32
    for name in NAMES:
        assert torch.equal(getattr(back, name), getattr(sae, name).to(torch.bfloat16).float()), name


def test_load_saelens_rejects_other_architectures(tmp_path):
    save_saelens(_folded_sae(), tmp_path, model_name="m", hook_name="h", context_size=8)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(ValueError, match="architecture='gated'"):
        load_saelens(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "topk"}))
    with pytest.raises(ValueError, match="no k"):
        load_saelens(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        save_saelens(_folded_sae(), tmp_path / "x", model_name="m", hook_name="h", context_size=8, dtype="int8")
