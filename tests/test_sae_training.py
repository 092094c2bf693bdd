"""The trainer beyond the JumpReLU math: resume from checkpoints, dead-latent windows, the TopK and
ReLU + L1 baselines through the same sweep, bf16 autocast, and their release forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae import (FileCheckpoint, JumpReLUSAE, ReLUSAE, TopKSAE, TrainConfig, load_gemma_scope_npz, load_saelens,
                 save_gemma_scope_npz, save_saelens, sweep_points, train_saes)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**kw) -> TrainConfig:
    base = dict(widths=[16, 24], lambdas=[0.01, 0.1], batch_size=64, lr=2e-3, lr_warmup_steps=3,
                lambda_warmup_steps=5, log_every=4, bandwidth=0.01, checkpoint_every=3, epochs=2,
                dead_window_tokens=256)
    base.update(kw)
    return TrainConfig(**base)


def _rows(n_batches: int = 10, d_in: int = 8, rows: int = 64, seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 5.0 * torch.randn(n_batches * rows, d_in, generator=gen) + 1.0


class _Crash(Exception):
    pass


class _CrashingBatches:
    """A re-iterable batch list whose first pass dies after `after` batches, as a killed worker would."""

    def __init__(self, batches: list[torch.Tensor], after: int) -> None:
        self.batches, self.after, self.served = batches, after, 0

    def __iter__(self):
        for b in self.batches:
            if self.served == self.after:
                raise _Crash
            self.served += 1
            yield b


def _assert_same(a, b):
    assert len(a) == len(b)
    for ta, tb in zip(a, b):
        assert (ta.architecture, ta.width, ta.sparsity, ta.steps, ta.tokens) == \
               (tb.architecture, tb.width, tb.sparsity, tb.steps, tb.tokens)
        for name, value in ta.sae.state_tensors().items():
            assert torch.equal(value, tb.sae.state_tensors()[name]), (ta.point, name)
        assert ta.log == tb.log


@pytest.mark.parametrize("source", ["array", "stream"])
def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path, source):
    rows = _rows()
    cfg = _cfg(architectures=["jumprelu", "topk", "relu"], topk_ks=[4], l1_coefficients=[0.05])
    clean = train_saes(rows, None, cfg, norm_scale=14.0)

    store = FileCheckpoint(tmp_path / "ckpt.pt")
    if source == "array":
        # the array source reads ahead on a thread; a crash inside the step loop is the same as a kill
        calls = []

        def on_log(rec):  # dies while logging step 12, before that step's checkpoint is written
            calls.append(rec)
            if rec["step"] == 12:
                raise _Crash
        with pytest.raises(_Crash):
            train_saes(rows, None, cfg, norm_scale=14.0, checkpoint=store, on_log=on_log)
        data, expected = rows, 9
    else:
        batches = list(rows.split(64))
        with pytest.raises(_Crash):
            train_saes(_CrashingBatches(batches, after=14), 8, cfg, norm_scale=14.0, checkpoint=store)
        data, expected = batches, 12
    assert store.path.exists()
    resumed = train_saes(data, 8, cfg, norm_scale=14.0, checkpoint=store)
    assert resumed[0].resumed_from == expected
    _assert_same(clean, resumed)


@pytest.mark.parametrize("source", ["array", "stream"])
def test_a_width_with_more_passes_trains_as_if_alone_and_resumes_past_the_others_end(tmp_path, source):
    """Gemma Scope's wider SAEs saw more tokens: with `epochs_by_width` each width's SAEs are exactly those
    of a sweep trained for its passes (same seeds, same batches), and a crash after the shorter SAEs ended
    resumes to the same result."""
    rows = _rows()
    data = rows if source == "array" else list(rows.split(64))
    cfg = _cfg(epochs=2, epochs_by_width={24: 3})
    assert (cfg.epochs_of(16), cfg.epochs_of(24), cfg.passes) == (2, 3, 3)
    mixed = train_saes(data, 8, cfg, norm_scale=14.0)
    two, three = (train_saes(data, 8, _cfg(epochs=e), norm_scale=14.0) for e in (2, 3))
    _assert_same([t for t in mixed if t.width == 16], [t for t in two if t.width == 16])
    _assert_same([t for t in mixed if t.width == 24], [t for t in three if t.width == 24])
    assert {(t.width, t.steps, t.tokens) for t in mixed} == {(16, 20, 1280), (24, 30, 1920)}

    store = FileCheckpoint(tmp_path / "ckpt.pt")
    batches = list(rows.split(64))
    with pytest.raises(_Crash):  # dies at step 26 of 30: the last checkpoint (24) is past width 16's end (20)
        train_saes(_CrashingBatches(batches, after=26), 8, cfg, norm_scale=14.0, checkpoint=store)
    resumed = train_saes(batches, 8, cfg, norm_scale=14.0, checkpoint=store)
    assert resumed[0].resumed_from == 24
    _assert_same(mixed, resumed)


def test_epochs_by_width_names_widths_of_the_sweep_and_old_fingerprints_stay():
    with pytest.raises(ValueError, match=r"epochs_by_width names widths \[32\]"):
        _cfg(epochs_by_width={32: 4})
    with pytest.raises(ValueError, match="at least 1 pass"):
        _cfg(epochs_by_width={16: 0})
    assert "epochs_by_width" not in _cfg().shaping_fields()
    assert _cfg(epochs_by_width={16: 2}).shaping_fields() == _cfg().shaping_fields()  # the same as `epochs`
    assert _cfg(epochs_by_width={24: 4}).shaping_fields()["epochs_by_width"] == {"24": 4}


def test_a_checkpoint_of_another_config_is_ignored(tmp_path):
    rows = _rows(4)
    store = FileCheckpoint(tmp_path / "ckpt.pt")
    train_saes(rows, None, _cfg(), norm_scale=14.0, checkpoint=store)
    # checkpoint_every only changes how training runs, so a checkpoint stays valid across it
    again = train_saes(rows, None, _cfg(checkpoint_every=5), norm_scale=14.0, checkpoint=store)
    assert again[0].resumed_from == 6
    with pytest.warns(UserWarning, match="config"):
        fresh = train_saes(rows, None, _cfg(lr=1e-3), norm_scale=14.0, checkpoint=store)
    assert fresh[0].resumed_from == 0
    with pytest.warns(UserWarning, match="norm_scale"):
        train_saes(rows, None, _cfg(lr=1e-3), norm_scale=13.0, checkpoint=store)


def test_dead_fraction_counts_latents_silent_for_a_window_of_tokens():
    """A latent with a huge threshold never fires: dead once the window has passed, not before."""
    rows = _rows(8)
    cfg = _cfg(widths=[16], lambdas=[0.01], epochs=1, log_every=1, dead_window_tokens=200,
               threshold_init=1e6, lr=1e-12)
    (t,) = train_saes(rows, None, cfg, norm_scale=14.0)
    dead = [r["dead_frac"] for r in t.log]
    assert dead[:3] == [0.0, 0.0, 0.0]  # 64, 128, 192 tokens < 200
    assert dead[3:] == [1.0] * 5
    cfg = _cfg(widths=[16], lambdas=[0.01], epochs=1, log_every=1, dead_window_tokens=200, threshold_init=0.0)
    (t,) = train_saes(rows, None, cfg, norm_scale=14.0)
    assert t.log[-1]["dead_frac"] < 0.5


def test_sweep_spans_architectures_widths_and_sparsities():
    cfg = _cfg(architectures=["jumprelu", "topk", "relu"], topk_ks=[2, 4], l1_coefficients=[0.1])
    points = sweep_points(cfg)
    assert [(p.architecture, p.width, p.sparsity) for p in points] == [
        ("jumprelu", 16, 0.01), ("jumprelu", 16, 0.1), ("jumprelu", 24, 0.01), ("jumprelu", 24, 0.1),
        ("topk", 16, 2), ("topk", 16, 4), ("topk", 24, 2), ("topk", 24, 4), ("relu", 16, 0.1), ("relu", 24, 0.1)]
    assert [p.slug for p in points[3:6]] == ["lambda_0.1", "topk_2", "topk_4"]
    assert points[-1].slug == "relu_l1_0.1"
    # a JumpReLU-only suite ignores the baselines' settings, so its fingerprint does not move with them
    assert _cfg().shaping_fields() == _cfg(topk_ks=[7]).shaping_fields()
    assert _cfg().shaping_fields() != _cfg(lambdas=[0.02]).shaping_fields()
    with pytest.raises(ValueError):
        _cfg(architectures=["jumprelu", "jumprelu"])
    with pytest.raises(ValueError):
        _cfg(topk_ks=[0])


def test_baselines_train_with_their_own_sparsity():
    """TopK never exceeds k; ReLU's L0 falls as its L1 coefficient rises; JumpReLU is unchanged by their
    presence (same seeds, same stream)."""
    rows = _rows(20, d_in=16)
    c = math.sqrt(float(rows.pow(2).sum(-1).mean()))
    only_jump = train_saes(rows, None, _cfg(widths=[32], epochs=1), norm_scale=c)
    cfg = _cfg(widths=[32], epochs=1, architectures=["jumprelu", "topk", "relu"], topk_ks=[3, 8],
               l1_coefficients=[0.001, 0.3])
    out = train_saes(rows, None, cfg, norm_scale=c)
    _assert_same(only_jump, out[:2])
    by = {(t.architecture, t.sparsity): t for t in out}
    for k in (3, 8):
        sae = by[("topk", k)].sae
        assert isinstance(sae, TopKSAE) and sae.k == k
        f = sae.encode(rows)
        assert int((f != 0).sum(-1).max()) <= k
        assert by[("topk", k)].log[-1]["lambda_t"] == 0.0 and by[("topk", k)].log[-1]["sparsity_loss"] == 0.0
    assert isinstance(by[("relu", 0.3)].sae, ReLUSAE)
    l0 = {s: float((by[("relu", s)].sae.encode(rows) > 0).sum(-1).float().mean()) for s in (0.001, 0.3)}
    assert l0[0.3] < l0[0.001]


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "relu"])
def test_every_architecture_folds_to_raw_activations(arch):
    gen = torch.Generator().manual_seed(0)
    sae = {"jumprelu": lambda: JumpReLUSAE(6, 12, 0.05, 0.001, generator=gen),
           "topk": lambda: TopKSAE(6, 12, k=3, generator=gen), "relu": lambda: ReLUSAE(6, 12, generator=gen)}[arch]()
    with torch.no_grad():
        sae.b_dec.normal_(generator=gen)
        sae.b_enc.normal_(generator=gen)
    x = torch.randn(50, 6, generator=gen)
    c = 7.5
    folded = sae.folded(c)
    x_hat, f = sae(x)
    x_hat_raw, f_raw = folded(c * x)
    assert folded.apply_b_dec_to_input is False and type(folded) is type(sae)
    assert torch.equal(f != 0, f_raw != 0)
    torch.testing.assert_close(f_raw, c * f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat_raw, c * x_hat, rtol=1e-5, atol=1e-5)


def test_baseline_release_forms(tmp_path):
    gen = torch.Generator().manual_seed(1)
    relu = ReLUSAE(6, 12, generator=gen).folded(2.0)
    topk = TopKSAE(6, 12, k=4, generator=gen).folded(2.0)
    save_gemma_scope_npz(relu, tmp_path / "relu.npz")
    as_jump = load_gemma_scope_npz(tmp_path / "relu.npz")
    x = torch.randn(20, 6, generator=gen)
    assert torch.equal(as_jump.threshold, torch.zeros(12))
    torch.testing.assert_close(as_jump(x)[0], relu(x)[0])
    with pytest.raises(ValueError, match="topk SAE has no such form"):
        save_gemma_scope_npz(topk, tmp_path / "topk.npz")
    for sae, name, arch in ((relu, "relu", "standard"), (topk, "topk", "topk")):
        save_saelens(sae, tmp_path / name, model_name="m", hook_name="blocks.0.hook_resid_post", context_size=8)
        loaded, cfg = load_saelens(tmp_path / name)
        assert cfg["architecture"] == arch and type(loaded) is type(sae)
        torch.testing.assert_close(loaded(x)[0], sae(x)[0])
    assert load_saelens(tmp_path / "topk")[1]["k"] == 4


def test_bf16_autocast_keeps_master_weights_thresholds_and_adam_in_fp32(tmp_path):
    rows = _rows(6)
    store = FileCheckpoint(tmp_path / "ckpt.pt")
    cfg = _cfg(widths=[16], lambdas=[0.01], autocast_dtype="bfloat16", epochs=1, checkpoint_every=6)
    (t,) = train_saes(rows, None, cfg, norm_scale=14.0, checkpoint=store)
    (f32,) = train_saes(rows, None, _cfg(widths=[16], lambdas=[0.01], epochs=1), norm_scale=14.0)
    assert all(v.dtype == torch.float32 for v in t.sae.state_tensors().values())
    state = torch.load(store.path, weights_only=True)
    adam = state["runs"][0]["opt"]["state"]
    assert all(s["exp_avg_sq"].dtype == torch.float32 for s in adam.values())
    assert not torch.equal(t.sae.W_enc, f32.sae.W_enc)  # it did run in bf16
    np.testing.assert_allclose(t.log[-1]["mse"], f32.log[-1]["mse"], rtol=0.1)


def test_a_zarr_array_is_an_activation_source():
    """The public API reads a zarr array directly (no storage code in between): same SAEs as from memory."""
    import zarr

    rows = _rows(6)
    z = zarr.create_array(store=zarr.storage.MemoryStore(), shape=tuple(rows.shape), chunks=(128, 8), dtype="float32")
    z[:] = rows.numpy()
    cfg = _cfg(widths=[16], lambdas=[0.01], epochs=1)
    (a,) = train_saes(z, None, cfg, norm_scale=14.0)
    (b,) = train_saes(rows, None, cfg, norm_scale=14.0)
    assert a.steps == b.steps == 6
    assert all(torch.equal(v, b.sae.state_tensors()[k]) for k, v in a.sae.state_tensors().items())
