"""Learning-rate and sparsity-coefficient schedules, as pure functions of the step.

Pure functions of the step (rather than torch schedulers) so a resumed run gets the same values from the
step counter alone, with no scheduler state to checkpoint.
"""
from __future__ import annotations

import math

from .config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Cosine warmup from lr_warmup_start * lr to lr over lr_warmup_steps, then constant.

    Warmup keeps Adam's first updates small while its second-moment estimate is still noisy.
    """
    if step >= cfg.lr_warmup_steps:
        return cfg.lr
    start = cfg.lr_warmup_start * cfg.lr
    frac = max(step, 0) / cfg.lr_warmup_steps
    return start + (cfg.lr - start) * 0.5 * (1.0 - math.cos(math.pi * frac))


def lambda_at(step: int, lam: float, cfg: TrainConfig) -> float:
    """Linear warmup from 0 to lam over lambda_warmup_steps, then constant.

    Starting without the L0 penalty lets the dictionary form before the thresholds start killing latents.
    """
    if cfg.lambda_warmup_steps == 0 or step >= cfg.lambda_warmup_steps:
        return lam
    return lam * max(step, 0) / cfg.lambda_warmup_steps
