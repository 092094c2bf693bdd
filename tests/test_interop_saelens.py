"""SAELens interop (the optional `interop` extra): SAEs trained here on real activations of the embedded
Gemma 2, exported with save_saelens, load in SAELens itself as its own classes and encode and decode exactly
as ours do; SAEs that SAELens saves (inference and training classes) load back with load_saelens.

Its tests skip when sae-lens is not installed. Importing sae_lens pulls in transformer_lens (several seconds).
"""
from __future__ import annotations

import json

import pytest
import torch

from sae import JumpReLUSAE, TrainConfig, load_saelens, save_saelens, train_saes
from tasks.config import ModelConfig
from tasks.lm.embedded import read_corpus
from tasks.lm.model import load_model, load_tokenizer, special_token_ids
from tasks.lm.sites import TL_HOOKS, ActivationCapture, site_hooks

LAYER = 1
HOOK = TL_HOOKS["res"].format(L=LAYER)
CTX = 64
WIDTH = 128
TOPK = 16
NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


@pytest.fixture(scope="module")
def sl():
    """sae_lens, imported by the tests that use it only: every pytest worker collects this module, and the
    import (transformer_lens with it) costs ~5 CPU-s."""
    return pytest.importorskip("sae_lens")


def _lens_classes(sl) -> dict:
    return {"jumprelu": sl.JumpReLUSAE, "topk": sl.TopKSAE, "relu": sl.StandardSAE}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Everything here is tiny (d_model 64, width 128): on a busy 2-core machine two intra-op threads
    spin against each other and the sweep below took ~7 s instead of ~0.15 s. Restored afterwards."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def acts(embedded_assets) -> torch.Tensor:
    """The residual stream after layer 1 of the embedded Gemma 2 on 16 corpus documents (BOS, EOS and
    padding dropped, as extraction does): about a thousand real rows of width d_model."""
    mc = ModelConfig(name_or_path=str(embedded_assets.model_dir), device="cpu")
    model, tok = load_model(mc), load_tokenizer(mc)
    enc = tok(read_corpus(embedded_assets.corpus_path)[:16], return_tensors="pt", padding=True, truncation=True,
              max_length=CTX)
    cap = ActivationCapture([("res", LAYER)])
    with torch.no_grad(), site_hooks(model, cap.hooks()):
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    keep = ~torch.isin(enc["input_ids"], torch.tensor(sorted(special_token_ids(tok))))
    x = cap.values[("res", LAYER)][keep].float()
    assert x.shape == (int(keep.sum()), model.config.hidden_size) and x.shape[0] >= 512
    return x


@pytest.fixture(scope="module")
def trained(acts):
    """One JumpReLU, one TopK and one ReLU SAE trained on the same real rows (~1 s), folded to raw units."""
    cfg = TrainConfig(widths=[WIDTH], architectures=["jumprelu", "topk", "relu"], lambdas=[0.01], topk_ks=[TOPK],
                      l1_coefficients=[0.05], threshold_init=0.05, bandwidth=0.05, lr=2e-3, lr_warmup_steps=0,
                      lambda_warmup_steps=0, batch_size=128, epochs=4, log_every=10, checkpoint_every=0)
    norm_scale = float(acts.pow(2).sum(-1).mean().sqrt())
    return {t.architecture: t.sae for t in train_saes(acts, None, cfg, norm_scale=norm_scale)}


def _save(sae, folder):
    save_saelens(sae, folder, model_name="embedded:tiny-gemma2", hook_name=HOOK, context_size=CTX,
                 extra_metadata={"layer": LAYER})
    return folder


def _assert_same_codes(ours, lens, x: torch.Tensor) -> None:
    """encode agrees (values and active set) and decode agrees on the same codes, to float32 rounding of the
    activations' scale. A latent may flip only where its pre-activation sits within that rounding of the
    threshold (the two libraries group the encoder matmul and bias differently); none does here."""
    scale = float(x.abs().max())
    tol = 1e-5 * scale
    with torch.no_grad():
        f_ours, f_lens = ours.encode(x), lens.encode(x)
        flipped = (f_ours != 0) != (f_lens != 0)
        if isinstance(ours, JumpReLUSAE) and flipped.any():
            margin = (ours.pre_acts(x) - ours.threshold).abs()[flipped]
            assert float(margin.max()) <= tol, f"{int(flipped.sum())} latents flip, up to {float(margin.max())} from threshold"
        assert int(flipped.sum()) == 0
        torch.testing.assert_close(f_lens, f_ours, rtol=1e-5, atol=tol)
        torch.testing.assert_close(lens.decode(f_ours), ours.decode(f_ours), rtol=1e-5, atol=tol)
        torch.testing.assert_close(lens(x), ours(x)[0], rtol=1e-5, atol=tol)


def test_trained_jumprelu_gates_real_activations(acts, trained):
    """The SAE under test is a real one: thresholds well above zero cut positive pre-activations, so a
    loader that ignored the threshold (or read it as >= / ReLU) would disagree below."""
    sae = trained["jumprelu"]
    with torch.no_grad():
        z = sae.pre_acts(acts)
        f = sae.encode(acts)
    assert float(sae.threshold.detach().min()) > 0
    active = f != 0
    l0 = active.sum(-1).float().mean()
    assert 1 < l0 < WIDTH / 2
    assert active.any(0).sum() > WIDTH // 2  # most latents fire somewhere
    gated = (z > 0) & ~active
    assert gated.float().mean() > 0.05  # a large share of positive pre-activations sit below threshold


def test_saelens_loads_our_jumprelu_export(sl, acts, trained, tmp_path):
    ours = trained["jumprelu"]
    folder = _save(ours, tmp_path / "jumprelu")
    lens = sl.SAE.load_from_disk(folder, device="cpu")
    assert type(lens) is sl.JumpReLUSAE
    assert (lens.cfg.d_in, lens.cfg.d_sae) == (ours.d_in, ours.d_sae) == (acts.shape[1], WIDTH)
    assert lens.cfg.architecture() == "jumprelu"
    assert lens.cfg.apply_b_dec_to_input is False and lens.cfg.normalize_activations == "none"
    assert lens.cfg.metadata.hook_name == HOOK and lens.cfg.metadata.context_size == CTX
    assert lens.cfg.metadata.layer == LAYER
    assert lens.W_enc.dtype == torch.float32
    for name in NAMES:
        assert torch.equal(getattr(lens, name).detach(), getattr(ours, name).detach()), name
    # what SAELens would write for this SAE is exactly the cfg.json we wrote
    assert lens.cfg.to_dict() == json.loads((folder / "cfg.json").read_text())
    _assert_same_codes(ours, lens, acts)


def test_threshold_is_strict_in_both(sl, trained, tmp_path):
    """z == threshold is inactive in both (f = z * H(z - theta), H strict). Real activations never land on a
    threshold exactly, so this is forced: for x = 0 both compute z = b_enc exactly, and half the latents
    get threshold = b_enc; the other half sit just below it and fire."""
    ours = trained["jumprelu"]
    b_enc = ours.b_enc.detach().abs() + 0.5
    tie = torch.arange(ours.d_sae) % 2 == 0
    threshold = torch.where(tie, b_enc, b_enc - 0.25)
    edited = JumpReLUSAE.from_tensors({**ours.state_tensors(), "b_enc": b_enc, "threshold": threshold})
    lens = sl.SAE.load_from_disk(_save(edited, tmp_path / "tie"), device="cpu")
    zero = torch.zeros(3, ours.d_in)
    with torch.no_grad():
        f_ours, f_lens = edited.encode(zero), lens.encode(zero)
    assert torch.equal(edited.pre_acts(zero).detach()[0], b_enc)
    assert not f_ours[:, tie].any() and not f_lens[:, tie].any()
    assert torch.equal(f_lens, f_ours) and torch.equal(f_ours[0, ~tie], b_enc[~tie])


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_saelens_loads_our_baseline_exports(sl, acts, trained, tmp_path, arch):
    ours = trained[arch]
    folder = _save(ours, tmp_path / arch)
    lens = sl.SAE.load_from_disk(folder, device="cpu")
    assert type(lens) is _lens_classes(sl)[arch]
    assert (lens.cfg.d_in, lens.cfg.d_sae) == (ours.d_in, ours.d_sae)
    assert lens.cfg.to_dict() == json.loads((folder / "cfg.json").read_text())
    if arch == "topk":
        assert lens.cfg.k == TOPK and lens.cfg.rescale_acts_by_decoder_norm is False
    with torch.no_grad():
        l0 = (lens.encode(acts) != 0).sum(-1)
    assert 0 < l0.float().mean() < WIDTH / 2
    if arch == "topk":
        assert int(l0.max()) <= TOPK
    _assert_same_codes(ours, lens, acts)


def test_saelens_saved_jumprelu_loads_with_ours(sl, acts, trained, tmp_path):
    """SAE.save_model of the SAE SAELens loaded from our export gives back the same tensors and behaviour."""
    ours = trained["jumprelu"]
    lens = sl.SAE.load_from_disk(_save(ours, tmp_path / "ours"), device="cpu")
    lens.save_model(tmp_path / "lens")
    back, cfg = load_saelens(tmp_path / "lens")
    assert isinstance(back, JumpReLUSAE) and back.apply_b_dec_to_input is False
    assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["hook_name"] == HOOK
    for name in NAMES:
        assert torch.equal(getattr(back, name), getattr(ours, name)), name
    _assert_same_codes(back, lens, acts)


def test_native_saelens_jumprelu_with_b_dec_on_input_loads_with_ours(sl, acts, trained, tmp_path):
    """A SAELens-built JumpReLU SAE in its default form (apply_b_dec_to_input=True, the pre-encoder bias
    that our folded releases never have): the same function as our trained SAE, re-expressed with
    b_enc' = b_enc + b_dec @ W_enc and a non-zero b_dec, round-trips through SAELens's own files."""
    ours = trained["jumprelu"]
    cfg = sl.JumpReLUSAEConfig(d_in=ours.d_in, d_sae=ours.d_sae)
    assert cfg.apply_b_dec_to_input is True
    lens = sl.JumpReLUSAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_dec", "threshold"):
            getattr(lens, name).copy_(getattr(ours, name))
        lens.b_enc.copy_(ours.b_enc + ours.b_dec @ ours.W_enc)
    lens.save_model(tmp_path / "native")
    back, saved_cfg = load_saelens(tmp_path / "native")
    assert back.apply_b_dec_to_input is True and saved_cfg["metadata"]["sae_lens_version"] == lens.cfg.metadata.sae_lens_version
    _assert_same_codes(back, lens, acts)
    _assert_same_codes(ours, lens, acts)


def test_saelens_trained_jumprelu_loads_with_ours(sl, acts, tmp_path):
    """A few steps of SAELens's own JumpReLU training (training_forward_pass, its L0 coefficient and
    straight-through threshold gradient) on the real rows; its inference export loads with ours."""
    torch.manual_seed(0)
    cfg = sl.JumpReLUTrainingSAEConfig(d_in=acts.shape[1], d_sae=64, jumprelu_init_threshold=0.5,
                                       jumprelu_bandwidth=0.5, l0_coefficient=1e-3, apply_b_dec_to_input=True)
    sae = sl.JumpReLUTrainingSAE(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    thr0 = sae.threshold.detach().clone()
    for step in range(5):
        step_input = sl.saes.sae.TrainStepInput(sae_in=acts[:256], coefficients={"l0": cfg.l0_coefficient},
                                                dead_neuron_mask=None, n_training_steps=step, is_logging_step=False)
        out = sae.training_forward_pass(step_input)
        assert set(out.losses) == {"mse_loss", "l0_loss"}
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert not torch.equal(sae.threshold.detach(), thr0)
    sae.save_inference_model(tmp_path / "trained")
    back, saved_cfg = load_saelens(tmp_path / "trained")
    assert saved_cfg["metadata"]["training_architecture"] == "jumprelu"
    assert back.apply_b_dec_to_input is True
    lens = sl.SAE.load_from_disk(tmp_path / "trained", device="cpu")
    assert type(lens) is sl.JumpReLUSAE
    with torch.no_grad():
        active = lens.encode(acts) != 0
    assert 0 < active.float().mean() < 1
    _assert_same_codes(back, lens, acts)


def test_topk_with_decoder_norm_rescaling_loads_with_ours(sl, acts, trained, tmp_path):
    """SAELens's TopK training default, rescale_acts_by_decoder_norm, encodes with z * ||W_dec_i|| and decodes
    with f / ||W_dec_i||; our loader folds the norms into the weights and reconstructs the same x_hat."""
    folder = _save(trained["topk"], tmp_path / "topk")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "rescale_acts_by_decoder_norm": True}))
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    gen = torch.Generator().manual_seed(0)
    tensors["W_dec"] = tensors["W_dec"] * (0.5 + torch.rand(tensors["W_dec"].shape[0], 1, generator=gen))
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    lens = sl.SAE.load_from_disk(folder, device="cpu")
    assert lens.cfg.rescale_acts_by_decoder_norm is True
    ours, _ = load_saelens(folder)
    assert torch.allclose(ours.W_dec.norm(dim=1), torch.ones(ours.d_sae), atol=1e-5)
    scale = float(acts.abs().max())
    with torch.no_grad():
        torch.testing.assert_close(ours(acts)[0], lens(acts), rtol=1e-5, atol=1e-5 * scale)
        assert torch.equal(ours.encode(acts) != 0, lens.encode(acts) != 0)
