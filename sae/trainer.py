"""Train every width x lambda SAE of one (site, layer) on a single stream of batches.

Reading activations dominates the cost at scale, so each batch is read once and fed to every SAE in turn
(Gemma Scope's shared data server, dictionary_learning's trick). Each SAE keeps its own Adam.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch
from torch import Tensor

from .config import TrainConfig
from .jumprelu import JumpReLUSAE
from .schedules import lambda_at, lr_at

BatchSource = Union[Iterable[Tensor], Callable[[], Iterable[Tensor]]]


@dataclass
class TrainedSAE:
    """One trained SAE, already folded so it eats raw activations, with its training log."""

    width: int
    lam: float
    sae: JumpReLUSAE
    steps: int
    tokens: int
    log: list[dict] = field(default_factory=list)


@dataclass
class _Run:
    """Mutable per-SAE training state; the last step's losses are kept on device so logging can read them
    after the stream ends without a look-ahead (which would break sources that reuse batch buffers)."""

    width: int
    lam: float
    sae: JumpReLUSAE
    opt: torch.optim.Adam
    fired: Tensor
    last: dict[str, Tensor] = field(default_factory=dict)
    lam_t: float = 0.0
    log: list[dict] = field(default_factory=list)


def _generator_for(seed: int, width_index: int, lambda_index: int) -> torch.Generator:
    """A per-SAE seed that depends only on the sweep position, so adding a width leaves others unchanged."""
    state = np.random.SeedSequence([seed, width_index, lambda_index]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def _epoch_stream(batches: BatchSource, epochs: int) -> Iterator[Tensor]:
    if callable(batches):
        for _ in range(epochs):
            yield from batches()
        return
    for _ in range(epochs):
        yield from batches


def _check_source(batches: BatchSource, epochs: int) -> None:
    if callable(batches):
        return
    if not isinstance(batches, Iterable):
        raise TypeError("batches must be an iterable of tensors or a callable returning one")
    if epochs > 1 and iter(batches) is batches:
        raise ValueError(
            f"epochs={epochs} needs batches that can be iterated again: pass a re-iterable or a callable "
            "returning a fresh iterator, not a one-shot iterator"
        )


def _record(run: _Run, step: int, tokens: int, lr: float, batch_var: Tensor, batch_rows: int) -> dict:
    mse = run.last["mse"]
    return {
        "width": run.width,
        "lambda": run.lam,
        "step": step,
        "tokens": tokens,
        "loss": float(run.last["loss"]),
        "mse": float(mse),
        "l0": float(run.last["l0"]),
        "fvu_batch": float(mse * batch_rows / batch_var),
        "dead_frac": float(1.0 - run.fired.float().mean()),
        "lambda_t": run.lam_t,
        "lr": lr,
    }


def train_saes(
    batches: BatchSource,
    d_in: int,
    cfg: TrainConfig,
    norm_scale: float,
    on_log: Callable[[dict], None] | None = None,
    device: str | torch.device = "cpu",
) -> list[TrainedSAE]:
    """Train all widths x lambdas on `batches` (raw activations [B, d_in]) for cfg.epochs passes.

    `norm_scale` is C = sqrt(E||x_raw||^2) from the dataset statistics; the SAEs train on x_raw / C so one
    set of hyper-parameters fits every site and layer, and are folded back to raw units on return.
    `batches` is an iterable (re-iterable when epochs > 1) or a callable returning a fresh iterable.

    Every cfg.log_every steps, and after the last step, one record per SAE goes to `on_log` and to that
    SAE's log. `dead_frac` there is the fraction of latents that did not fire since the previous record.
    """
    if not (norm_scale > 0 and np.isfinite(norm_scale)):
        raise ValueError(f"norm_scale must be positive and finite, got {norm_scale}")
    _check_source(batches, cfg.epochs)
    device = torch.device(device)

    runs: list[_Run] = []
    for wi, width in enumerate(cfg.widths):
        for li, lam in enumerate(cfg.lambdas):
            gen = _generator_for(cfg.seed, wi, li)
            sae = JumpReLUSAE(d_in, width, cfg.threshold_init, cfg.bandwidth, generator=gen)
            sae.to(device)
            opt = torch.optim.Adam(
                sae.parameters(), lr=lr_at(0, cfg), betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps
            )
            fired = torch.zeros(width, dtype=torch.bool, device=device)
            runs.append(_Run(width=width, lam=lam, sae=sae, opt=opt, fired=fired))

    def emit(step: int, tokens: int, lr: float, batch_var: Tensor, batch_rows: int) -> None:
        for run in runs:
            rec = _record(run, step, tokens, lr, batch_var, batch_rows)
            run.log.append(rec)
            if on_log is not None:
                on_log(rec)
            run.fired.zero_()

    step = 0
    tokens = 0
    lr = lr_at(0, cfg)
    batch_var = torch.ones((), device=device)
    batch_rows = 0
    logged_at = -1
    for batch in _epoch_stream(batches, cfg.epochs):
        if batch.ndim != 2 or batch.shape[1] != d_in:
            raise ValueError(f"expected a batch of shape [B, {d_in}], got {tuple(batch.shape)}")
        x = batch.to(device=device, dtype=torch.float32) / norm_scale
        batch_rows = x.shape[0]
        batch_var = (x - x.mean(0)).pow(2).sum()
        lr = lr_at(step, cfg)
        for run in runs:
            run.lam_t = lambda_at(step, run.lam, cfg)
            for group in run.opt.param_groups:
                group["lr"] = lr
            losses, _, f = run.sae.loss_and_outputs(x, run.lam_t)
            run.opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            run.sae.remove_parallel_decoder_grad()
            run.opt.step()
            run.sae.normalize_decoder()
            run.sae.clamp_threshold()
            run.fired |= (f.detach() != 0).any(0)
            run.last = {k: v.detach() for k, v in losses.items()}
        step += 1
        tokens += batch_rows
        if step % cfg.log_every == 0:
            emit(step, tokens, lr, batch_var, batch_rows)
            logged_at = step

    if step == 0:
        raise ValueError("batches yielded no data: nothing to train on")
    if logged_at != step:
        emit(step, tokens, lr, batch_var, batch_rows)

    return [
        TrainedSAE(width=run.width, lam=run.lam, sae=run.sae.folded(norm_scale), steps=step, tokens=tokens,
                   log=run.log)
        for run in runs
    ]
