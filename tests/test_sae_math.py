"""The JumpReLU math of docs/architecture.md ("The SAE math"): forward values, straight-through gradients, folding, the
decoder constraints, schedules, the multi-SAE trainer and the streaming metrics."""
from __future__ import annotations

import math

import pytest
import torch

from sae import SAEMetrics, TrainConfig, JumpReLUSAE, nearest_by_decoder_cosine, train_saes
from sae.jumprelu import heaviside, jumprelu, jumprelu_and_heaviside
from sae.metrics import FREQ_HIST_EDGES
from sae.schedules import lambda_at, lr_at
from sae.trainer import _generator_for

EPS = 0.1  # a wide bandwidth so hand-placed pre-activations land clearly inside or outside the kernel


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _kernel(z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    return ((z - theta) / eps).abs().lt(0.5).to(z.dtype)


# ---------------------------------------------------------------- forward values


def test_jumprelu_forward_is_strict_at_the_threshold():
    z = torch.tensor([[-1.0, 0.0, 0.5, 0.5, 1.0, 2.0]])
    theta = torch.tensor([0.0, 0.0, 0.5, 0.4, 1.0, 1.5])
    assert jumprelu(z, theta, EPS).tolist() == [[0.0, 0.0, 0.0, 0.5, 0.0, 2.0]]
    assert heaviside(z, theta, EPS).tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0, 1.0]]
    f, h = jumprelu_and_heaviside(z, theta, EPS)
    assert f.tolist() == [[0.0, 0.0, 0.0, 0.5, 0.0, 2.0]]
    assert h.tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0, 1.0]]


# ---------------------------------------------------------------- straight-through gradients


def _near_threshold_batch():
    """z placed at known offsets from theta: |offset| < eps/2 inside the kernel, others outside."""
    theta = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    offsets = torch.tensor(
        [[0.01, -0.02, 0.3], [-0.04, 0.2, 0.03], [0.07, 0.045, -0.049], [-0.3, -0.01, 0.0]], dtype=torch.float64
    )
    return theta + offsets, theta


def test_jumprelu_gradients_match_design_formulas():
    z0, theta0 = _near_threshold_batch()
    z = z0.clone().requires_grad_(True)
    theta = theta0.clone().requires_grad_(True)
    g = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0], [0.25, 2.0, 4.0], [1.5, -0.5, 2.0]], dtype=torch.float64)
    jumprelu(z, theta, EPS).backward(g)

    h = (z0 > theta0).double()
    assert torch.equal(z.grad, g * h)  # df/dz = H(z - theta), no pseudo-derivative on z
    expected = (g * -(theta0 / EPS) * _kernel(z0, theta0, EPS)).sum(0)
    torch.testing.assert_close(theta.grad, expected, rtol=0, atol=1e-12)
    # column 0: rows 0, 1 in the window; column 1: rows 0, 2, 3; column 2: rows 1, 2, 3
    torch.testing.assert_close(
        expected, torch.tensor([-(0.2 / EPS) * 4.0, -(0.5 / EPS) * -0.5, -(1.0 / EPS) * 5.0], dtype=torch.float64)
    )


def test_heaviside_gradient_goes_to_threshold_only():
    z0, theta0 = _near_threshold_batch()
    z = z0.clone().requires_grad_(True)
    theta = theta0.clone().requires_grad_(True)
    g = torch.arange(1.0, 13.0, dtype=torch.float64).reshape(4, 3)
    heaviside(z, theta, EPS).backward(g)

    assert z.grad is None or torch.count_nonzero(z.grad) == 0
    expected = (g * -(1.0 / EPS) * _kernel(z0, theta0, EPS)).sum(0)
    torch.testing.assert_close(theta.grad, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(expected, torch.tensor([-50.0, -210.0, -270.0], dtype=torch.float64))


def test_fused_estimator_equals_the_two_separate_ones():
    gen = torch.Generator().manual_seed(3)
    z0 = torch.rand(64, 8, generator=gen, dtype=torch.float64)
    theta0 = torch.rand(8, generator=gen, dtype=torch.float64)
    gf = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    gh = torch.randn(64, 8, generator=gen, dtype=torch.float64)

    z1, t1 = z0.clone().requires_grad_(True), theta0.clone().requires_grad_(True)
    f, h = jumprelu_and_heaviside(z1, t1, EPS)
    ((f * gf).sum() + (h * gh).sum()).backward()

    z2, t2 = z0.clone().requires_grad_(True), theta0.clone().requires_grad_(True)
    ((jumprelu(z2, t2, EPS) * gf).sum() + (heaviside(z2, t2, EPS) * gh).sum()).backward()

    torch.testing.assert_close(z1.grad, z2.grad)
    torch.testing.assert_close(t1.grad, t2.grad)
    assert torch.count_nonzero(t1.grad) > 0


def _sae_with_thresholds_near_pre_acts(x: torch.Tensor) -> JumpReLUSAE:
    """A small SAE whose thresholds sit just below or above some pre-activations, inside the kernel."""
    sae = JumpReLUSAE(4, 6, bandwidth=EPS, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(0.3, 0.8, 6))
        sae.b_dec.copy_(torch.tensor([0.1, -0.2, 0.05, 0.0]))
        z = sae.pre_acts(x)
        sae.threshold.copy_((z[0] + torch.tensor([-0.02, 0.03, -0.01, 0.04, -0.03, 0.02])).clamp_min(0.0))
    return sae


def test_loss_threshold_gradient_by_hand():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, generator=gen)
    sae = _sae_with_thresholds_near_pre_acts(x)
    lam = 0.3
    out = sae.training_loss(x, lam)[0]
    out["loss"].backward()

    with torch.no_grad():
        z = sae.pre_acts(x)
        theta = sae.threshold
        h = (z > theta).float()
        f = z * h
        x_hat = f @ sae.W_dec + sae.b_dec
        b = x.shape[0]
        mse = (x_hat - x).pow(2).sum(1).mean()
        l0 = h.sum(1).mean()
        k = _kernel(z, theta, EPS)
        dl_df = 2.0 * (x_hat - x) @ sae.W_dec.T / b
        d_theta_recon = (dl_df * -(theta / EPS) * k).sum(0)
        d_theta_l0 = (lam / b) * (-(1.0 / EPS) * k).sum(0)
    assert k.any() and not k.all()
    torch.testing.assert_close(out["mse"], mse)
    torch.testing.assert_close(out["l0"], l0)
    torch.testing.assert_close(out["loss"], mse + lam * l0)
    torch.testing.assert_close(sae.threshold.grad, d_theta_recon + d_theta_l0, rtol=1e-5, atol=1e-5)
    # the encoder sees the reconstruction gradient through H(z - theta) only
    dl_dz = dl_df * h
    torch.testing.assert_close(sae.b_enc.grad, dl_dz.sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae.W_enc.grad, (x - sae.b_dec.detach()).T @ dl_dz, rtol=1e-5, atol=1e-6)


def test_l0_term_sends_no_gradient_to_pre_activations():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 4, generator=gen)
    sae = _sae_with_thresholds_near_pre_acts(x)
    sae.training_loss(x, 1.0)[0]["l0"].backward()
    for name in ("W_enc", "b_enc", "b_dec", "W_dec"):
        grad = getattr(sae, name).grad
        assert grad is None or torch.count_nonzero(grad) == 0, name
    assert torch.count_nonzero(sae.threshold.grad) > 0


# ---------------------------------------------------------------- init, decoder constraints


def test_init_follows_gemma_scope():
    sae = JumpReLUSAE(16, 40, threshold_init=0.002, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(40))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert sae.W_enc.data_ptr() != sae.W_dec.data_ptr()
    assert torch.count_nonzero(sae.b_enc) == 0 and torch.count_nonzero(sae.b_dec) == 0
    assert torch.all(sae.threshold == 0.002)
    assert all(p.dtype == torch.float32 for p in sae.parameters())
    assert sae.apply_b_dec_to_input is True
    again = JumpReLUSAE(16, 40, threshold_init=0.002, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sae.W_dec, again.W_dec)


def test_remove_parallel_decoder_grad_leaves_rows_orthogonal():
    gen = torch.Generator().manual_seed(5)
    sae = JumpReLUSAE(8, 12, bandwidth=EPS, generator=gen)
    with torch.no_grad():
        sae.b_enc.fill_(0.5)
    x = torch.randn(32, 8, generator=gen)
    sae.training_loss(x, 0.01)[0]["loss"].backward()
    before = sae.W_dec.grad.clone()
    sae.remove_parallel_decoder_grad()
    after = sae.W_dec.grad
    w = sae.W_dec.detach()
    assert torch.count_nonzero(before) > 0
    assert (after * w).sum(1).abs().max() < 1e-6
    parallel = (before * w).sum(1, keepdim=True) * w
    torch.testing.assert_close(after, before - parallel)


def test_normalize_and_clamp_after_a_step():
    sae = JumpReLUSAE(4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 3.0, 6)[:, None])
        sae.threshold.copy_(torch.tensor([-0.5, 0.0, 0.1, -1e-3, 0.2, 3.0]))
    sae.normalize_decoder()
    sae.clamp_threshold()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(6))
    assert sae.threshold.tolist() == pytest.approx([0.0, 0.0, 0.1, 0.0, 0.2, 3.0])


def test_decoder_rows_unit_norm_after_trainer_steps():
    cfg = TrainConfig(widths=[24], lambdas=[0.05], batch_size=32, lr=5e-3, lr_warmup_steps=0, lambda_warmup_steps=0,
                      log_every=5, bandwidth=EPS)
    gen = torch.Generator().manual_seed(6)
    batches = [torch.randn(32, 8, generator=gen) * 3.0 for _ in range(15)]
    (trained,) = train_saes(batches, 8, cfg, norm_scale=3.0 * math.sqrt(8))
    w = trained.sae.W_dec
    torch.testing.assert_close(w.norm(dim=1), torch.ones(24))
    init = JumpReLUSAE(8, 24, generator=_generator_for(cfg.seed, 0, 0))
    assert not torch.equal(w, init.W_dec)
    assert torch.all(trained.sae.threshold >= 0)


# ---------------------------------------------------------------- folding


def _trained_looking_sae(d_in: int = 10, d_sae: int = 30) -> JumpReLUSAE:
    gen = torch.Generator().manual_seed(7)
    sae = JumpReLUSAE(d_in, d_sae, generator=gen)
    with torch.no_grad():
        sae.W_enc.add_(0.1 * torch.randn(d_in, d_sae, generator=gen))
        sae.b_enc.copy_(0.2 * torch.randn(d_sae, generator=gen))
        sae.b_dec.copy_(0.3 * torch.randn(d_in, generator=gen))
        sae.threshold.copy_(0.3 * torch.rand(d_sae, generator=gen))
    return sae


def test_folded_sae_on_raw_activations_matches_unfolded_on_normalised():
    sae = _trained_looking_sae()
    c = 37.5
    x_raw = c * torch.randn(256, 10, generator=torch.Generator().manual_seed(8)) / math.sqrt(10)
    folded = sae.folded(c)
    assert folded.apply_b_dec_to_input is False

    with torch.no_grad():
        x_hat, f = sae(x_raw / c)
        x_hat_f, f_f = folded(x_raw)
    assert torch.equal(f_f != 0, f != 0)
    assert 0 < torch.count_nonzero(f) < f.numel()
    torch.testing.assert_close(f_f, c * f, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x_hat_f, c * x_hat, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(folded.encode(x_raw), c * sae.encode(x_raw / c), rtol=1e-5, atol=1e-4)

    assert torch.equal(folded.W_enc, sae.W_enc) and torch.equal(folded.W_dec, sae.W_dec)
    torch.testing.assert_close(folded.threshold, c * sae.threshold)
    torch.testing.assert_close(folded.b_dec, c * sae.b_dec)
    torch.testing.assert_close(folded.b_enc, c * sae.b_enc - c * (sae.b_dec @ sae.W_enc))


def test_folding_a_folded_sae_only_rescales():
    sae = _trained_looking_sae().folded(2.0)
    twice = sae.folded(3.0)
    x = torch.randn(64, 10, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(twice(3.0 * x)[0], 3.0 * sae(x)[0], rtol=1e-5, atol=1e-5)


def test_state_tensors_round_trip():
    sae = _trained_looking_sae()
    t = sae.state_tensors()
    assert set(t) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
    back = JumpReLUSAE.from_tensors(t, apply_b_dec_to_input=True)
    assert back.apply_b_dec_to_input is True
    for name, value in t.items():
        assert torch.equal(getattr(back, name), value)
    with pytest.raises(ValueError):
        JumpReLUSAE.from_tensors({**t, "b_dec": torch.zeros(3)})
    with pytest.raises(KeyError):
        JumpReLUSAE.from_tensors({k: v for k, v in t.items() if k != "threshold"})
    rng = torch.get_rng_state()
    JumpReLUSAE.from_tensors(t)
    assert torch.equal(rng, torch.get_rng_state())  # loading is not a random init


# ---------------------------------------------------------------- schedules


def test_lr_schedule_cosine_warmup_then_constant():
    cfg = TrainConfig(lr=1e-3, lr_warmup_steps=1000, lr_warmup_start=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(500, cfg) == pytest.approx(0.55e-3)
    assert lr_at(250, cfg) == pytest.approx(1e-4 + 0.9e-3 * (1 - math.cos(math.pi / 4)) / 2)
    assert lr_at(1000, cfg) == pytest.approx(1e-3)
    assert lr_at(10**6, cfg) == pytest.approx(1e-3)
    assert all(lr_at(s, cfg) <= lr_at(s + 1, cfg) for s in range(0, 1100, 7))
    assert lr_at(0, TrainConfig(lr=1e-3, lr_warmup_steps=0)) == 1e-3


def test_lambda_schedule_linear_warmup_then_constant():
    cfg = TrainConfig(lambda_warmup_steps=10000)
    assert lambda_at(0, 0.02, cfg) == 0.0
    assert lambda_at(5000, 0.02, cfg) == pytest.approx(0.01)
    assert lambda_at(10000, 0.02, cfg) == pytest.approx(0.02)
    assert lambda_at(50000, 0.02, cfg) == pytest.approx(0.02)
    assert lambda_at(0, 0.02, TrainConfig(lambda_warmup_steps=0)) == 0.02


def test_config_defaults_and_validation():
    cfg = TrainConfig()
    assert (cfg.widths, cfg.lambdas, cfg.lr, cfg.adam_beta1, cfg.batch_size) == ([16384], [0.001], 7e-5, 0.0, 4096)
    assert (cfg.threshold_init, cfg.bandwidth, cfg.lr_warmup_steps, cfg.lambda_warmup_steps) == (0.001, 0.001, 1000,
                                                                                                  10000)
    for bad in ({"widths": []}, {"widths": [0]}, {"lambdas": []}, {"lambdas": [-1.0]}, {"batch_size": 0},
                {"nonsense": 1}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


# ---------------------------------------------------------------- trainer


def _tiny_cfg(**kw) -> TrainConfig:
    base = dict(widths=[16, 24], lambdas=[0.01, 0.1], batch_size=64, lr=2e-3, lr_warmup_steps=3,
                lambda_warmup_steps=5, log_every=4, bandwidth=0.01)
    base.update(kw)
    return TrainConfig(**base)


def _gaussian_batches(n: int, d_in: int = 8, rows: int = 64, seed: int = 10) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [5.0 * torch.randn(rows, d_in, generator=gen) + 1.0 for _ in range(n)]


def test_trainer_is_bit_for_bit_repeatable():
    batches = _gaussian_batches(10)
    a = train_saes(batches, 8, _tiny_cfg(), norm_scale=14.0)
    b = train_saes(batches, 8, _tiny_cfg(), norm_scale=14.0)
    assert [(t.width, t.sparsity) for t in a] == [(16, 0.01), (16, 0.1), (24, 0.01), (24, 0.1)]
    for ta, tb in zip(a, b):
        for name, value in ta.sae.state_tensors().items():
            assert torch.equal(value, tb.sae.state_tensors()[name]), name
        assert ta.log == tb.log
    c = train_saes(batches, 8, _tiny_cfg(seed=1), norm_scale=14.0)
    assert not torch.equal(a[0].sae.W_dec, c[0].sae.W_dec)


def test_trainer_logs_steps_tokens_and_returns_folded_saes():
    records: list[dict] = []
    batches = _gaussian_batches(10)
    out = train_saes(batches, 8, _tiny_cfg(), norm_scale=14.0, on_log=records.append)
    keys = {"architecture", "width", "sparsity", "step", "tokens", "loss", "mse", "sparsity_loss", "l0", "fvu_batch",
            "dead_frac", "lambda_t", "lr"}
    assert all(set(r) == keys for r in records)
    assert len(records) == 4 * 3  # steps 4, 8, and the last step 10, for each of 4 SAEs
    for t in out:
        assert t.steps == 10 and t.tokens == 640
        assert [r["step"] for r in t.log] == [4, 8, 10]
        assert [r["tokens"] for r in t.log] == [256, 512, 640]
        assert t.log[-1]["lambda_t"] == t.sparsity and t.log[0]["lambda_t"] == pytest.approx(t.sparsity * 3 / 5)
        assert t.log[-1]["lr"] == pytest.approx(2e-3)
        assert all(0.0 <= r["dead_frac"] <= 1.0 and r["fvu_batch"] > 0 for r in t.log)
        assert t.sae.apply_b_dec_to_input is False
        assert all(r["sparsity_loss"] == pytest.approx(r["lambda_t"] * r["l0"], rel=1e-6) for r in t.log)
        assert t.log == [r for r in records if (r["width"], r["sparsity"]) == (t.width, t.sparsity)]


def test_trainer_epochs_and_batch_sources():
    batches = _gaussian_batches(4)
    cfg = _tiny_cfg(widths=[16], lambdas=[0.01], epochs=3)
    from_list = train_saes(batches, 8, cfg, norm_scale=14.0)
    from_callable = train_saes(lambda: iter(batches), 8, cfg, norm_scale=14.0)
    assert from_list[0].steps == from_callable[0].steps == 12
    assert torch.equal(from_list[0].sae.W_enc, from_callable[0].sae.W_enc)
    with pytest.raises(ValueError, match="iterated again"):
        train_saes(iter(batches), 8, cfg, norm_scale=14.0)
    bf16 = train_saes((b.to(torch.bfloat16) for b in batches), 8, _tiny_cfg(widths=[16], lambdas=[0.01]), 14.0)
    assert bf16[0].steps == 4 and bf16[0].sae.W_enc.dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        train_saes([torch.zeros(4, 9)], 8, cfg, norm_scale=1.0)
    with pytest.raises(ValueError, match="no data"):
        train_saes([], 8, _tiny_cfg(), norm_scale=1.0)


def test_trainer_takes_arrays_of_rows_and_drops_the_ragged_tail():
    """A numpy array, a torch tensor and the same rows as a batch list train the same SAEs."""
    batches = _gaussian_batches(4)
    rows = torch.cat(batches)
    cfg = _tiny_cfg(widths=[16], lambdas=[0.01], epochs=2)
    from_list = train_saes(batches, 8, cfg, norm_scale=14.0)
    from_numpy = train_saes(torch.cat([rows, rows[:10]]).numpy(), None, cfg, norm_scale=14.0)
    from_tensor = train_saes(rows, 8, cfg, norm_scale=14.0)
    for other in (from_numpy, from_tensor):
        assert other[0].steps == 8
        assert torch.equal(from_list[0].sae.W_enc, other[0].sae.W_enc)
    with pytest.raises(ValueError, match="columns"):
        train_saes(rows, 9, cfg, norm_scale=14.0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_saes(rows[:10], None, cfg, norm_scale=14.0)


def _sparse_dictionary_data(seed: int, n_batches: int, rows: int = 256, d_in: int = 32, n_feat: int = 64):
    """x = sparse codes @ unit-norm dictionary: ~3 of 64 features active per row, magnitudes in [0.5, 1.5]."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(n_feat, d_in, generator=gen)
    dictionary /= dictionary.norm(dim=1, keepdim=True)

    def sample(n: int) -> torch.Tensor:
        codes = (torch.rand(n, n_feat, generator=gen) < 0.05) * (0.5 + torch.rand(n, n_feat, generator=gen))
        return codes @ dictionary

    return sample(rows * n_batches).split(rows), sample(4096)


@torch.no_grad()
def evaluate_sae(sae, batches, dataset_mean) -> dict:
    """A folded SAE's SAEMetrics over raw activation batches, streamed as the evaluate stage does."""
    metrics = SAEMetrics()
    for x in batches:
        x_hat, f = sae(x.float())
        metrics.update(x.float(), x_hat, f)
    return metrics.result(dataset_mean)


def test_l0_falls_as_lambda_rises_on_sparse_synthetic_data():
    train, held_out = _sparse_dictionary_data(seed=0, n_batches=200)
    c = float(torch.cat(train).pow(2).sum(1).mean().sqrt())
    cfg = TrainConfig(widths=[64], lambdas=[1e-3, 1e-2, 1e-1], batch_size=256, lr=1e-3, lr_warmup_steps=10,
                      lambda_warmup_steps=20, log_every=50)
    results = train_saes(list(train), 32, cfg, norm_scale=c)
    l0s, fvus = [], []
    for trained in results:
        m = evaluate_sae(trained.sae, held_out.split(1024), held_out.mean(0))
        l0s.append(m["l0"])
        fvus.append(m["fvu"])
        assert m["l0"] == pytest.approx(trained.log[-1]["l0"], rel=0.15)
    assert l0s[0] > 1.3 * l0s[1] and l0s[1] > 1.2 * l0s[2], l0s
    assert fvus[0] < fvus[1] < fvus[2] < 0.6, fvus


# ---------------------------------------------------------------- metrics


def test_metrics_streaming_equals_one_shot():
    sae = _trained_looking_sae().folded(4.0)
    gen = torch.Generator().manual_seed(11)
    x = 4.0 * torch.randn(600, 10, generator=gen) + 2.0
    mean = x.mean(0) + 0.01
    with torch.no_grad():
        x_hat, f = sae(x)
    one = SAEMetrics()
    one.update(x, x_hat, f)
    streamed = SAEMetrics()
    for lo in range(0, 600, 97):
        streamed.update(x[lo:lo + 97], x_hat[lo:lo + 97], f[lo:lo + 97])
    a, b = one.result(mean), streamed.result(mean)
    assert torch.equal(a.pop("fire_counts"), b.pop("fire_counts"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12, abs=0), key
    xd = x.double()
    assert a["fvu"] == pytest.approx(float((xd - x_hat.double()).pow(2).sum() / (xd - mean.double()).pow(2).sum()))
    assert a["l0"] == pytest.approx(float((f != 0).sum()) / 600)
    assert a["mse"] == pytest.approx(float((xd - x_hat.double()).pow(2).sum(1).mean()))
    helper = evaluate_sae(sae, x.split(128), mean)
    assert helper["l0"] == a["l0"] and helper["fvu"] == pytest.approx(a["fvu"])


def test_metrics_perfect_reconstruction_dead_dense_and_histogram():
    x = torch.randn(1000, 5, generator=torch.Generator().manual_seed(12))
    f = torch.zeros(1000, 6)
    f[:, 0] = 1.0            # fires on every token: dense, log10 freq 0
    f[:500, 1] = 2.0         # 50%: dense
    f[:50, 2] = 0.5          # 5%: not dense
    f[:2, 3] = 3.0           # 0.2%: log10 ~ -2.7
    # latents 4 and 5 never fire
    m = SAEMetrics(dense_threshold=0.1)
    m.update(x, x.clone(), f)
    r = m.result(x.mean(0))
    assert r["fvu"] == 0.0 and r["mse"] == 0.0
    assert r["n_tokens"] == 1000
    assert r["l0"] == pytest.approx((1000 + 500 + 50 + 2) / 1000)
    assert (r["n_dead"], r["dead_frac"]) == (2, pytest.approx(2 / 6))
    assert (r["n_dense"], r["dense_frac"]) == (2, pytest.approx(2 / 6))
    assert r["fire_counts"].tolist() == [1000, 500, 50, 2, 0, 0]
    edges = r["freq_hist_edges"]
    assert edges == list(FREQ_HIST_EDGES) and edges[0] == -8.0 and edges[-1] == 0.0 and len(edges) == 17
    hist = r["freq_hist"]
    assert sum(hist) == 4  # dead latents are counted by n_dead, not in the histogram
    assert hist[-1] == 1 + 1  # log10(1) = 0 and log10(0.5) ~ -0.3 share the top bin [-0.5, 0]
    assert hist[edges.index(-1.5)] == 1  # log10(0.05) ~ -1.3
    assert hist[edges.index(-3.0)] == 1  # log10(0.002) ~ -2.7
    with pytest.raises(ValueError):
        SAEMetrics().result(torch.zeros(5))


def test_nearest_by_decoder_cosine_is_the_argmax_of_all_cosines_in_any_chunking():
    g = torch.Generator().manual_seed(0)
    narrow = torch.randn(50, 16, generator=g)
    wide = torch.cat([narrow[:10] * 3.0, torch.randn(90, 16, generator=g)])  # 10 copies of narrow latents, rescaled
    full = torch.nn.functional.normalize(wide, dim=1) @ torch.nn.functional.normalize(narrow, dim=1).T
    for chunk in (7, 4096):
        idx, cos = nearest_by_decoder_cosine(wide, narrow, chunk=chunk)
        assert torch.equal(idx, full.argmax(1)) and torch.allclose(cos, full.max(1).values)
    assert idx[:10].tolist() == list(range(10)) and torch.allclose(cos[:10], torch.ones(10))
