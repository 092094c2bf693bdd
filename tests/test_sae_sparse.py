"""The sparse training step (sae/sparse_step.py) against the dense one it must equal: losses, gradients and
fired latents of one step, parameters and logs after many steps through the trainer, for JumpReLU (with
entries on both sides of the threshold inside its kernel window) and the TopK and ReLU + L1 baselines, with
dead latents; the automatic choice between them; bit-for-bit repeatability on CPU, across a resume too."""
from __future__ import annotations

import pytest
import torch

from sae import FileCheckpoint, JumpReLUSAE, ReLUSAE, TopKSAE, TrainConfig, train_saes
from sae.jumprelu import _kernel_window
from sae import sparse_step
from sae.sparse_step import SPARSE_MAX_L0_FRACTION, step_loss, use_sparse

D_IN, WIDTH, BATCH = 12, 40, 64
EPS = 0.05
DEAD = [0, 1, 2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(BATCH, D_IN, generator=gen) + 0.1


def _sae(arch: str) -> torch.nn.Module:
    """Non-zero biases, three dead latents (b_enc far below any input's reach), for TopK rows where some
    of the k selected are <= 0, and for JumpReLU thresholds placed so that some entries sit just below and
    some just above theta inside the window."""
    gen = torch.Generator().manual_seed(1)
    sae = {"jumprelu": lambda: JumpReLUSAE(D_IN, WIDTH, threshold_init=0.05, bandwidth=EPS, generator=gen),
           "relu": lambda: ReLUSAE(D_IN, WIDTH, generator=gen),
           "topk": lambda: TopKSAE(D_IN, WIDTH, k=5, generator=gen)}[arch]()
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(WIDTH, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(D_IN, generator=gen))
        sae.b_enc[DEAD] = -50.0
        if arch == "topk":
            sae.b_enc -= 0.35  # some rows then have fewer than k positive pre-activations
        if arch == "jumprelu":
            z = sae.pre_acts(_x())
            sae.threshold[5:10] = z[0, 5:10] + EPS / 4    # row 0 just below: in the window, inactive
            sae.threshold[10:15] = z[1, 10:15] - EPS / 4  # row 1 just above: in the window, active
    return sae


def _one_step(sae, x: torch.Tensor, sparse: bool, coefficient: float = 0.3):
    for p in sae.parameters():
        p.grad = None
    losses, fired = step_loss(sae, x, coefficient, sparse)
    losses["loss"].backward()
    return ({k: v.detach() for k, v in losses.items()}, {n: p.grad.clone() for n, p in sae.named_parameters()},
            fired)


@pytest.mark.parametrize("arch", ["jumprelu", "relu", "topk"])
def test_one_sparse_step_equals_the_dense_step(arch):
    sae, x = _sae(arch), _x()
    dense_losses, dense_grads, dense_fired = _one_step(sae, x, sparse=False)
    sparse_losses, sparse_grads, sparse_fired = _one_step(sae, x, sparse=True)
    assert dense_losses.keys() == sparse_losses.keys()
    for k in dense_losses:
        torch.testing.assert_close(sparse_losses[k], dense_losses[k], rtol=1e-6, atol=1e-7, msg=k)
    assert dense_losses["l0"] < 0.5 * WIDTH
    assert dense_grads.keys() == sparse_grads.keys() == set(sae.PARAM_NAMES)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(sparse_fired, dense_fired)
    assert not sparse_fired[DEAD].any()
    # dead latents get no gradient at all, by either step
    assert not sparse_grads["W_dec"][DEAD].any() and not sparse_grads["W_enc"][:, DEAD].any()
    if arch == "jumprelu":
        z = sae.pre_acts(x).detach()
        window = _kernel_window(z, sae.threshold.detach(), EPS)
        active = z > sae.threshold.detach()
        assert (window & active).any() and (window & ~active).any()
        assert sparse_grads["threshold"][5:15].ne(0).all()  # the window's straight-through gradient arrived
    if arch == "topk":
        assert (sae.pre_acts(x).topk(5).values <= 0).any()  # some selected latents are inactive


@pytest.mark.parametrize("arch", ["jumprelu", "relu", "topk"])
def test_a_batch_where_every_latent_is_dead(arch):
    sae, x = _sae(arch), _x()
    with torch.no_grad():
        sae.b_enc.fill_(-50.0)
    dense = _one_step(sae, x, sparse=False)
    sparse = _one_step(sae, x, sparse=True)
    for a, b in zip(dense[:2], sparse[:2]):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    assert not sparse[2].any() and float(sparse[0]["l0"]) == 0.0


def test_bf16_autocast_gives_the_dense_active_set():
    """Under autocast both steps read the same bf16-matmul pre-activations, so they agree on which latents
    fire and, up to the decoder's precision, on the losses."""
    sae, x = _sae("jumprelu"), _x()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = _one_step(sae, x, sparse=False)
        sparse = _one_step(sae, x, sparse=True)
    assert torch.equal(sparse[2], dense[2]) and torch.equal(sparse[0]["l0"], dense[0]["l0"])
    torch.testing.assert_close(sparse[0]["mse"], dense[0]["mse"], rtol=2e-2, atol=1e-3)


def _rows(n_batches: int = 12, seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 5.0 * torch.randn(n_batches * BATCH, 8, generator=gen) + 1.0


@pytest.fixture
def auto_limit(monkeypatch):
    """`auto`'s limit fixed at 5% of the width, whatever the measured CPU value, for _cfg below."""
    monkeypatch.setitem(sparse_step.SPARSE_MAX_L0_FRACTION, "cpu", 0.05)


def _cfg(**kw) -> TrainConfig:
    """Thresholds initialised so that JumpReLU's L0 wanders across `auto_limit` (3-6% of the width), so
    `auto` runs switch between the two steps; TopK's k is 5% and 9% of the widths."""
    base = dict(widths=[32, 64], lambdas=[0.01, 0.1], architectures=["jumprelu", "topk", "relu"], topk_ks=[3],
                l1_coefficients=[0.5], batch_size=BATCH, lr=2e-3, lr_warmup_steps=3, lambda_warmup_steps=5,
                log_every=2, threshold_init=0.6, bandwidth=0.05, checkpoint_every=5, epochs=1,
                dead_window_tokens=256)
    base.update(kw)
    return TrainConfig(**base)


def test_training_by_sparse_steps_stays_with_the_dense_run():
    """Twelve steps of every architecture. Agreement is to rounding only while no gradient is itself
    rounding noise: Adam divides a gradient that is ~0 by its ~0 second moment plus eps = 1e-8, so a
    latent's first near-zero gradient moves it by lr * g / eps, and two summation orders (sparse vs dense,
    or one thread count vs another) then differ by up to ~1e-4. These thresholds (L0 ~30%) avoid that."""
    rows = _rows()
    dense = train_saes(rows, None, _cfg(step="dense", threshold_init=0.15), norm_scale=14.0)
    sparse = train_saes(rows, None, _cfg(step="sparse", threshold_init=0.15), norm_scale=14.0)
    for td, ts in zip(dense, sparse):
        assert td.point == ts.point and td.steps == ts.steps == 12
        for name, value in td.sae.state_tensors().items():
            torch.testing.assert_close(ts.sae.state_tensors()[name], value, rtol=1e-4, atol=1e-5,
                                       msg=f"{td.point} {name}")
        for rd, rs in zip(td.log, ts.log):
            assert rd["l0"] == rs["l0"] and rd["dead_frac"] == rs["dead_frac"], td.point
            for key in ("loss", "mse", "sparsity_loss", "fvu_batch"):
                assert rs[key] == pytest.approx(rd[key], rel=1e-4, abs=1e-6), (td.point, key)


def test_auto_goes_sparse_once_the_measured_l0_is_small(monkeypatch):
    limit = SPARSE_MAX_L0_FRACTION["cpu"]
    assert not use_sparse("auto", None, 1000)  # nothing measured yet: dense
    assert use_sparse("auto", torch.tensor(limit * 1000), 1000)
    assert not use_sparse("auto", torch.tensor(limit * 1000 + 1), 1000)
    assert not use_sparse("auto", torch.tensor(1.0), 1000, "cuda")  # not measured there: dense
    assert use_sparse("sparse", None, 10) and not use_sparse("dense", torch.tensor(0.0), 10)
    taken = []
    for cls in (JumpReLUSAE, TopKSAE, ReLUSAE):
        monkeypatch.setattr(cls, "sparse_training_loss",
                            lambda self, x, c, _orig=cls.sparse_training_loss: taken.append(self.d_sae) or
                            _orig(self, x, c))
    cfg = _cfg(widths=[512], architectures=["topk"], topk_ks=[8])
    train_saes(_rows(4), None, cfg, norm_scale=14.0)
    assert taken == [512] * 3  # every step after the first, whose L0 nobody has measured yet


def test_sparse_training_is_bit_for_bit_repeatable(auto_limit):
    rows = _rows()
    for step in ("sparse", "auto"):
        a = train_saes(rows, None, _cfg(step=step), norm_scale=14.0)
        b = train_saes(rows, None, _cfg(step=step), norm_scale=14.0)
        for ta, tb in zip(a, b):
            for name, value in ta.sae.state_tensors().items():
                assert torch.equal(value, tb.sae.state_tensors()[name]), (step, ta.point, name)
            assert ta.log == tb.log


class _Crash(Exception):
    pass


def test_a_resumed_auto_run_equals_the_uninterrupted_one(tmp_path, auto_limit):
    rows = _rows()
    cfg = _cfg()
    clean = train_saes(rows, None, cfg, norm_scale=14.0)
    store = FileCheckpoint(tmp_path / "ckpt.pt")

    def on_log(rec):  # dies while logging step 8, after the checkpoint of step 5
        if rec["step"] == 8:
            raise _Crash
    with pytest.raises(_Crash):
        train_saes(rows, None, cfg, norm_scale=14.0, checkpoint=store, on_log=on_log)
    resumed = train_saes(rows, None, cfg, norm_scale=14.0, checkpoint=store)
    assert resumed[0].resumed_from == 5
    for ta, tb in zip(clean, resumed):
        for name, value in ta.sae.state_tensors().items():
            assert torch.equal(value, tb.sae.state_tensors()[name]), (ta.point, name)
        assert ta.log == tb.log
