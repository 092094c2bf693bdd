"""Training hyper-parameters for one (site, layer): every width x lambda SAE shares them.

Defaults are Gemma Scope's (docs/architecture.md, "The SAE math"), so a suite config only states what it changes.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .registry import ARCHITECTURES, architecture_class

#: fields that change how training runs but not what it produces (beyond float rounding, for `step`);
#: fingerprints and checkpoints leave them out
RUNTIME_FIELDS = frozenset({"checkpoint_every", "step"})


class TrainConfig(BaseModel):
    """Hyper-parameters of one training unit.

    The sweep is, for each architecture, widths x its sparsity settings (`lambdas` for JumpReLU's L0
    coefficient, `topk_ks` for TopK, `l1_coefficients` for ReLU + L1): every SAE is trained on the same
    batches, because reading the activations is the expensive part and one pass can feed them all.
    """

    model_config = ConfigDict(extra="forbid")

    widths: list[int] = Field(default_factory=lambda: [16384])
    lambdas: list[float] = Field(default_factory=lambda: [0.001])
    architectures: list[str] = Field(default_factory=lambda: ["jumprelu"],
                                     description=f"any of {', '.join(ARCHITECTURES)} (sae/registry.py)")
    topk_ks: list[int] = Field(default_factory=lambda: [64], description="k of each TopK baseline")
    l1_coefficients: list[float] = Field(default_factory=lambda: [5.0],
                                         description="L1 coefficient of each ReLU baseline (warmed up like lambda)")
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
    epochs_by_width: dict[int, int] = Field(
        default_factory=dict,
        description="passes for the widths named here, where they differ from `epochs`: Gemma Scope trained its "
                    "wider SAEs on more tokens (2^14 latents on 4B, 2^15-2^19 on 8B, 2^20 on 16B)")
    log_every: int = Field(50, gt=0)
    dead_window_tokens: int = Field(10_000_000, gt=0,
                                    description="a latent that has not fired for this many tokens counts as dead")
    checkpoint_every: int = Field(1000, ge=0, description="steps between checkpoints; 0 turns them off")
    autocast_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="matmul dtype; parameters, thresholds and Adam state stay float32 either way")
    step: Literal["auto", "dense", "sparse"] = Field(
        "auto", description="the training step: dense, sparse over active latents (sae/sparse_step.py), or "
                            "auto: sparse once the measured L0 is a small enough part of the width")
    seed: int = 0

    @field_validator("widths")
    @classmethod
    def _widths_positive(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("widths must name at least one width")
        if any(w <= 0 for w in v):
            raise ValueError(f"widths must be positive, got {v}")
        return v

    @field_validator("lambdas", "l1_coefficients", "topk_ks")
    @classmethod
    def _sparsity_positive(cls, v: list, info) -> list:
        if not v:
            raise ValueError(f"{info.field_name} must name at least one sparsity setting")
        if any(c <= 0 for c in v):
            raise ValueError(f"{info.field_name} must be positive, got {v}")
        return v

    @field_validator("architectures")
    @classmethod
    def _architectures_distinct(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"architectures must name each architecture once, got {v}")
        for name in v:
            architecture_class(name)
        return v

    @model_validator(mode="after")
    def _epochs_by_width_known(self) -> "TrainConfig":
        unknown = sorted(set(self.epochs_by_width) - set(self.widths))
        if unknown:
            raise ValueError(f"epochs_by_width names widths {unknown} that are not in widths {self.widths}")
        short = {w: e for w, e in self.epochs_by_width.items() if e < 1}
        if short:
            raise ValueError(f"epochs_by_width must give each width at least 1 pass, got {short}")
        return self

    def epochs_of(self, width: int) -> int:
        """How many passes over the data the SAEs of this width train for."""
        return self.epochs_by_width.get(width, self.epochs)

    @property
    def passes(self) -> int:
        """The passes the shared stream makes: the longest-trained width's. Narrower-trained SAEs stop early."""
        return max(self.epochs_of(w) for w in self.widths)

    def sparsities(self, architecture: str) -> list[float]:
        """The sweep's sparsity settings for one architecture."""
        return getattr(self, architecture_class(architecture).sparsity_field)

    def shaping_fields(self) -> dict:
        """The fields that shape the trained SAEs: what a fingerprint or a checkpoint must match. Sweeps of
        architectures not trained are left out, so adding `topk_ks` to a JumpReLU-only suite changes nothing."""
        unused = {cls.sparsity_field for name, cls in ARCHITECTURES.items() if name not in self.architectures}
        fields = self.model_dump(mode="json", exclude=set(RUNTIME_FIELDS) | unused | {"epochs_by_width"})
        # only the widths whose passes differ from `epochs`, and none at all when no width's do: a suite from
        # before this field keeps its fingerprints
        differing = {str(w): e for w, e in sorted(self.epochs_by_width.items()) if e != self.epochs}
        if differing:
            fields["epochs_by_width"] = differing
        return fields

    @field_validator("batch_size")
    @classmethod
    def _batch_positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"batch_size must be positive, got {v}")
        return v
