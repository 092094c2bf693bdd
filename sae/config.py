"""Training hyper-parameters for one (site, layer): every width x lambda SAE shares them.

Defaults are Gemma Scope's (DESIGN section 5), so a suite config only states what it changes.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TrainConfig(BaseModel):
    """Hyper-parameters of one training unit.

    `widths` x `lambdas` is the sweep: every pair is trained on the same batches, because reading the
    activations is the expensive part and one pass can feed them all.
    """

    model_config = ConfigDict(extra="forbid")

    widths: list[int] = Field(default_factory=lambda: [16384])
    lambdas: list[float] = Field(default_factory=lambda: [0.001])
    threshold_init: float = Field(0.001, ge=0)
    bandwidth: float = Field(0.001, gt=0)
    lr: float = Field(7e-5, gt=0)
    adam_beta1: float = Field(0.0, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    lr_warmup_steps: int = Field(1000, ge=0)
    lr_warmup_start: float = Field(0.1, ge=0, le=1, description="fraction of lr where the cosine warmup starts")
    lambda_warmup_steps: int = Field(10000, ge=0)
    batch_size: int = 4096
    epochs: int = Field(1, ge=1, description="passes over the data; tiny suites use more than one")
    log_every: int = Field(50, gt=0)
    dense_threshold: float = Field(0.1, gt=0, le=1)
    seed: int = 0

    @field_validator("widths")
    @classmethod
    def _widths_positive(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("widths must name at least one width")
        if any(w <= 0 for w in v):
            raise ValueError(f"widths must be positive, got {v}")
        return v

    @field_validator("lambdas")
    @classmethod
    def _lambdas_positive(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("lambdas must name at least one sparsity coefficient")
        if any(lam <= 0 for lam in v):
            raise ValueError(f"lambdas must be positive, got {v}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"batch_size must be positive, got {v}")
        return v
