"""benchmarks/train.py's SAELens comparison: the same step in SAELens's own JumpReLU trainer, `SAETrainer.fit()`.

sae_lens is optional (the `interop` extra), so it is imported only when the comparison runs."""
from __future__ import annotations

import time

import torch

from sae import TrainConfig
from train_common import (BASE_LAMBDA, CycledRows, Plan, free_memory, step_flops, summarise, sync, usage,
                          usage_per_step)


def saelens_available() -> tuple[bool, str]:
    try:
        import sae_lens  # optional, see time_saelens
        return True, getattr(sae_lens, "__version__", "?")
    except Exception as e:  # noqa: BLE001 -- any import failure means: skip, and say why
        return False, f"{type(e).__name__}: {e}"


class ClockedBatches:
    """SAELens's data provider: batch i of the rows, divided by the norm scale; reads the clock (after a
    synchronise) whenever it is asked for batch i with i a multiple of `every`. fit() asks at the start of
    each step, so the stamp at call i is taken after i steps."""

    def __init__(self, rows, batch: int, n_batches: int, scale: float, every: int, device: torch.device):
        self.rows, self.batch, self.n, self.scale = rows, batch, n_batches, scale
        self.every, self.device = every, device
        self.i = 0
        self.stamps: dict[int, float] = {}
        self.used: dict[int, tuple[int, float]] = {}

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        i = self.i
        if i % self.every == 0:
            sync(self.device)
            self.stamps[i] = time.perf_counter()
            self.used[i] = usage()
        if i >= self.n:
            raise StopIteration
        self.i += 1
        b = self.rows[i * self.batch:(i + 1) * self.batch]
        return b.to(self.device, torch.float32) / self.scale


def time_saelens(pool: torch.Tensor, width: int, plan: Plan, args, device: torch.device, scale: float,
                 threshold_init: float = 0.001) -> dict:
    """Same d_in, width, batch, threshold init, bandwidth, l0 coefficient and warm-up, Adam betas and lr as
    ours, constant schedule, no checkpoints, no wandb, bf16 autocast when ours uses it. Per step SAELens also
    tracks dead latents and clips the gradient norm; it does not renormalise decoder rows (ours does)."""
    # sae_lens is optional (the interop extra): imported here, where the comparison runs
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(args.seed)
    sae_cfg = JumpReLUTrainingSAEConfig(
        d_in=args.d_in, d_sae=width, dtype="float32", device=str(device), apply_b_dec_to_input=True,
        normalize_activations="none", jumprelu_init_threshold=threshold_init, jumprelu_bandwidth=0.001,
        jumprelu_sparsity_loss_mode="step", l0_coefficient=BASE_LAMBDA, l0_warm_up_steps=plan.warm)
    sae = JumpReLUTrainingSAE(sae_cfg)
    n_steps = plan.total + 1  # the stamp after the last timed step is taken when fit() asks for one more
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_steps * args.batch, train_batch_size_samples=args.batch,
        lr=TrainConfig().lr, lr_end=TrainConfig().lr, lr_scheduler_name="constant", lr_warm_up_steps=0,
        lr_decay_steps=0, adam_beta1=TrainConfig().adam_beta1, adam_beta2=TrainConfig().adam_beta2,
        device=str(device), autocast=args.autocast == "bfloat16", n_checkpoints=0, checkpoint_path=None,
        save_final_checkpoint=False, logger=LoggingConfig(log_to_wandb=False))
    source = CycledRows(pool, n_steps * args.batch)
    provider = ClockedBatches(source, args.batch, n_steps, scale, plan.every, device)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider)
    sync(device)
    t0 = time.perf_counter()
    trainer.fit()
    sync(device)
    total = time.perf_counter() - t0
    del trainer, sae
    free_memory(device)
    out = summarise(provider.stamps, plan)
    out.update(plan.as_dict())
    out["wall_s"] = total
    out.update(usage_per_step(provider.used[plan.warm], provider.used[plan.total], plan.timed))
    return out


def saelens_row(args, device, pool, scale, peak, ours_row: dict) -> dict:
    """SAELens at ours_row's width (K=1), with the same warm/timed/every plan. Ratio > 1: ours is faster."""
    width = ours_row["width"]
    plan = Plan(ours_row["every"], ours_row["warm_steps"], ours_row["timed_steps"])
    print(f"  SAELens width {width:>6}  K 1: {plan.warm} warm + {plan.timed} timed steps ...", flush=True)
    r = time_saelens(pool, width, plan, args, device, scale)
    flops = step_flops(args.batch, args.d_in, width)
    r.update({"width": width, "K": 1, "flops_per_s": flops * r["steps_per_s"],
              "frac_of_peak": flops * r["steps_per_s"] / peak,
              "tokens_per_s": args.batch * r["steps_per_s"],
              "ours_steps_per_s": ours_row["steps_per_s"],
              "ratio_ours_over_saelens": ours_row["steps_per_s"] / r["steps_per_s"],
              "ratio_median": r["median_s_per_step"] / ours_row["median_s_per_step"]})
    return r
