"""Train every SAE of a sweep -- architectures x widths x sparsities -- on a single stream of batches.

Reading activations dominates the cost at scale, so each batch is read once and fed to every SAE in turn
(Gemma Scope's shared data server, dictionary_learning's trick). Each SAE keeps its own Adam, and takes the
dense step or, once its measured L0 is a small part of its width, the sparse one (sae/sparse_step.py). With a
checkpoint store the whole state (parameters, Adam moments, step, data position, per-latent firing
history, logs, RNG) is saved every `checkpoint_every` steps, and a restarted call resumes from it; the
schedules are pure functions of the step, so a resumed run is the uninterrupted run, bit for bit on CPU.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .architectures import SweepPoint, build_sae, sweep_points
from .base import SparseAutoencoder
from .checkpoint import CheckpointStore, dumps, loads
from .config import TrainConfig
from .data import ArrayBatches, BatchSource, check_source, is_array, stream_from
from .schedules import lambda_at, lr_at
from .sparse_step import step_loss, use_sparse

CHECKPOINT_FORMAT = 1


@dataclass
class TrainedSAE:
    """One trained SAE, already folded so it eats raw activations, with its training log."""

    architecture: str
    width: int
    sparsity: float
    sae: SparseAutoencoder
    steps: int
    tokens: int
    log: list[dict] = field(default_factory=list)
    resumed_from: int = 0

    @property
    def point(self) -> SweepPoint:
        return SweepPoint(self.architecture, self.width, self.sparsity)


@dataclass
class _Run:
    """Mutable per-SAE training state. The last step's losses stay on device so logging reads them after
    the stream ends without a look-ahead (which would break sources that reuse batch buffers)."""

    point: SweepPoint
    sae: SparseAutoencoder
    opt: torch.optim.Adam
    gen: torch.Generator
    last_fired: Tensor  # tokens seen when each latent last fired
    epochs: int  # its passes over the stream (cfg.epochs_of its width)
    last: dict[str, Tensor] = field(default_factory=dict)
    coeff: float = 0.0
    log: list[dict] = field(default_factory=list)
    #: (step, tokens) where its last pass ended, once it has; it is not stepped after that
    done: tuple[int, int] | None = None


#: devices with a fused Adam kernel in torch
FUSED_ADAM_DEVICES = frozenset({"cpu", "cuda"})


def _generator_for(seed: int, width_index: int, sparsity_index: int) -> torch.Generator:
    """A per-SAE seed that depends only on the sweep position, so adding a width leaves others unchanged
    and every architecture at the same position starts from the same dictionary."""
    state = np.random.SeedSequence([seed, width_index, sparsity_index]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def _point_generator(point: SweepPoint, cfg: TrainConfig) -> torch.Generator:
    return _generator_for(cfg.seed, cfg.widths.index(point.width),
                          cfg.sparsities(point.architecture).index(point.sparsity))


def initial_sae(point: SweepPoint, d_in: int, cfg: TrainConfig) -> SparseAutoencoder:
    """The SAE a sweep point's training starts from: what its trained dictionary can be compared with (how
    far training moved each decoder row)."""
    return build_sae(point, d_in, cfg, _point_generator(point, cfg))


def _new_runs(d_in: int, cfg: TrainConfig, device: torch.device) -> list[_Run]:
    runs = []
    for point in sweep_points(cfg):
        gen = _point_generator(point, cfg)
        sae = build_sae(point, d_in, cfg, gen).to(device)
        # torch's fused Adam: one kernel for all of a step's parameter updates (the tiny suite's steps ran
        # 10-14% faster on CPU, BENCHMARKS.md); where it has no kernel, the default implementation
        opt = torch.optim.Adam(sae.parameters(), lr=lr_at(0, cfg), betas=(cfg.adam_beta1, cfg.adam_beta2),
                               eps=cfg.adam_eps, fused=device.type in FUSED_ADAM_DEVICES or None)
        last_fired = torch.zeros(point.width, dtype=torch.int64, device=device)
        runs.append(_Run(point=point, sae=sae, opt=opt, gen=gen, last_fired=last_fired,
                         epochs=cfg.epochs_of(point.width)))
    return runs


def _coefficient(point: SweepPoint, step: int, cfg: TrainConfig) -> float:
    """JumpReLU's L0 and ReLU's L1 coefficients warm up linearly; TopK has none."""
    if not point.cls.coefficient_warms_up:
        return 0.0
    return lambda_at(step, point.sparsity, cfg)


@dataclass
class _Position:
    """Where the stream is and what the last step saw: everything besides the runs a resume needs."""

    step: int = 0
    tokens: int = 0
    lr: float = 0.0
    batch_var: Tensor | None = None
    batch_rows: int = 0


def _record(run: _Run, pos: _Position, window: int) -> dict:
    mse = run.last["mse"]
    dead = (pos.tokens - run.last_fired) >= window
    return {
        "architecture": run.point.architecture,
        "width": run.point.width,
        "sparsity": float(run.point.sparsity),
        "step": pos.step,
        "tokens": pos.tokens,
        "loss": float(run.last["loss"]),
        "mse": float(mse),
        "sparsity_loss": float(run.last["sparsity"]),
        "l0": float(run.last["l0"]),
        "fvu_batch": float(mse * pos.batch_rows / pos.batch_var),
        "dead_frac": float(dead.float().mean()),
        "lambda_t": run.coeff,
        "lr": pos.lr,
    }


def _save(store: CheckpointStore, runs: list[_Run], pos: _Position, header: dict) -> None:
    state = dict(header, step=pos.step, tokens=pos.tokens, lr=pos.lr, batch_var=pos.batch_var,
                 batch_rows=pos.batch_rows, runs=[
                     {"point": [r.point.architecture, r.point.width, float(r.point.sparsity)],
                      "params": r.sae.state_dict(), "opt": r.opt.state_dict(), "rng": r.gen.get_state(),
                      "last_fired": r.last_fired, "last": r.last, "coeff": r.coeff, "log": r.log,
                      "done": r.done}
                     for r in runs])
    store.save(dumps(state))


def _restore(store: CheckpointStore, runs: list[_Run], header: dict, device: torch.device) -> _Position | None:
    """The saved position, with every run restored in place; None (and the runs untouched) when there is
    no checkpoint or it belongs to another configuration, data scale or sweep."""
    blob = store.load()
    if blob is None:
        return None
    state = loads(blob, device)
    mismatched = [k for k, v in header.items() if state.get(k) != v]
    points = [[r.point.architecture, r.point.width, float(r.point.sparsity)] for r in runs]
    if [s["point"] for s in state.get("runs", [])] != points:
        mismatched.append("sweep")
    if mismatched:
        warnings.warn(f"ignoring a checkpoint whose {', '.join(mismatched)} differ from this run's; "
                      "training from step 0", stacklevel=3)
        return None
    for run, saved in zip(runs, state["runs"]):
        run.sae.load_state_dict(saved["params"])
        run.opt.load_state_dict(saved["opt"])
        run.gen.set_state(saved["rng"].cpu())
        run.last_fired = saved["last_fired"]
        run.last = saved["last"]
        run.coeff = saved["coeff"]
        run.log = list(saved["log"])
        run.done = tuple(saved["done"]) if saved.get("done") is not None else None
    return _Position(step=state["step"], tokens=state["tokens"], lr=state["lr"], batch_var=state["batch_var"],
                     batch_rows=state["batch_rows"])


def train_saes(
    batches: BatchSource,
    d_in: int | None,
    cfg: TrainConfig,
    norm_scale: float,
    on_log: Callable[[dict], None] | None = None,
    device: str | torch.device = "cpu",
    checkpoint: CheckpointStore | None = None,
) -> list[TrainedSAE]:
    """Train every SAE of cfg's sweep on raw activations, each for its width's passes (`cfg.epochs_of`);
    return them folded. The stream makes `cfg.passes` passes; an SAE whose passes are over is no longer stepped.

    `batches` is a 2-D array of rows [N, d_in] (numpy, torch, zarr, ...: read cfg.batch_size rows at a
    time, ahead of the step), an `ArrayBatches`, an iterable of [B, d_in] tensors (re-iterable when
    epochs > 1), or a callable returning a fresh iterable per epoch. `d_in` may be None for arrays.
    `norm_scale` is C = sqrt(E||x_raw||^2) from the dataset statistics: the SAEs train on x_raw / C so one
    set of hyper-parameters fits every site and layer, and are folded back to raw units on return.

    Every cfg.log_every steps, and after the last step, one record per SAE goes to `on_log` and to that
    SAE's log; `dead_frac` there is the fraction of latents that have not fired in the last
    cfg.dead_window_tokens tokens. With `checkpoint`, state is saved every cfg.checkpoint_every steps and
    a call that finds a matching checkpoint resumes from it.
    """
    if not (norm_scale > 0 and np.isfinite(norm_scale)):
        raise ValueError(f"norm_scale must be positive and finite, got {norm_scale}")
    if is_array(batches) and not isinstance(batches, ArrayBatches):
        batches = ArrayBatches(batches, cfg.batch_size)
    if isinstance(batches, ArrayBatches):
        if d_in is not None and d_in != batches.d_in:
            raise ValueError(f"d_in={d_in} but the array has {batches.d_in} columns")
        if batches.n_batches == 0:
            raise ValueError(f"the array has {batches.array.shape[0]} rows, fewer than one batch of "
                             f"{batches.batch_size}")
        d_in = batches.d_in
    if d_in is None:
        raise ValueError("d_in is required unless batches is an array")
    check_source(batches, cfg.passes)
    device = torch.device(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.autocast_dtype == "bfloat16"
                else nullcontext())

    runs = _new_runs(d_in, cfg, device)
    header = {"format": CHECKPOINT_FORMAT, "config": cfg.shaping_fields(), "d_in": d_in,
              "norm_scale": float(norm_scale)}
    pos = _restore(checkpoint, runs, header, device) if checkpoint is not None else None
    resumed_from = pos.step if pos is not None else 0
    pos = pos or _Position(lr=lr_at(0, cfg), batch_var=torch.ones((), device=device))

    def emit(run: _Run) -> None:
        rec = _record(run, pos, cfg.dead_window_tokens)
        run.log.append(rec)
        if on_log is not None:
            on_log(rec)

    def finish(epoch: int) -> list[_Run]:
        """End the runs whose passes are over before `epoch`, each with a log record of where it ended;
        the runs still training."""
        for run in runs:
            if run.done is None and run.epochs <= epoch:
                run.done = (pos.step, pos.tokens)
                if pos.step and (not run.log or run.log[-1]["step"] != pos.step):
                    emit(run)
        return [run for run in runs if run.done is None]

    active = [run for run in runs if run.done is None]
    for epoch, batch in stream_from(batches, cfg.passes, pos.step):
        if any(run.epochs <= epoch for run in active):
            active = finish(epoch)
        if batch.ndim != 2 or batch.shape[1] != d_in:
            raise ValueError(f"expected a batch of shape [B, {d_in}], got {tuple(batch.shape)}")
        x = batch.to(device=device, dtype=torch.float32) / norm_scale
        pos.batch_rows = x.shape[0]
        pos.batch_var = (x - x.mean(0)).pow(2).sum()
        pos.lr = lr_at(pos.step, cfg)
        tokens_after = pos.tokens + pos.batch_rows
        for run in active:
            run.coeff = _coefficient(run.point, pos.step, cfg)
            for group in run.opt.param_groups:
                group["lr"] = pos.lr
            sparse = use_sparse(cfg.step, run.last.get("l0"), run.point.width, device.type)
            with autocast:
                losses, fired = step_loss(run.sae, x, run.coeff, sparse)
            run.opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            run.sae.remove_parallel_decoder_grad()
            run.opt.step()
            run.sae.after_step()
            run.last_fired = torch.where(fired, tokens_after, run.last_fired)
            run.last = {k: v.detach() for k, v in losses.items()}
        pos.step += 1
        pos.tokens = tokens_after
        if pos.step % cfg.log_every == 0:
            for run in active:
                emit(run)
        if checkpoint is not None and cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
            _save(checkpoint, runs, pos, header)

    if pos.step == 0:
        raise ValueError("batches yielded no data: nothing to train on")
    finish(cfg.passes)

    return [
        TrainedSAE(architecture=run.point.architecture, width=run.point.width, sparsity=run.point.sparsity,
                   sae=run.sae.folded(norm_scale), steps=run.done[0], tokens=run.done[1], log=run.log,
                   resumed_from=resumed_from)
        for run in runs
    ]
