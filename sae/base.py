"""What every SAE architecture here shares: an affine encoder, an activation, an affine decoder with
unit-norm rows, and the fold that moves training-time normalisation into the released weights.

Architectures differ only in their activation, their extra parameters and their sparsity penalty, so the
JumpReLU SAE and its baselines (TopK, ReLU + L1) go through one trainer and one evaluation, which is what
makes their L0-vs-fidelity curves comparable.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .sparse_step import Pattern


class SparseAutoencoder(nn.Module, metaclass=ABCMeta):
    """x_hat = act(x @ W_enc + b_enc) @ W_dec + b_dec, in its training form or its released (folded) form.

    `apply_b_dec_to_input` tells the two apart: training subtracts b_dec before encoding (on activations
    divided by C); the folded release has that bias and C baked into the weights, so it eats raw
    activations with a plain affine encoder, which is what Gemma Scope and SAELens load.
    Subclasses set `architecture`, add parameters in `EXTRA_PARAMS`, and implement `activation` and
    `training_loss`.
    """

    # ---- the architecture's facts: everything outside this class derives from these (sae/registry.py)
    #: the name configs and checkpoints use
    architecture: ClassVar[str] = ""
    #: how people and the report call it
    display_name: ClassVar[str] = ""
    #: the TrainConfig field listing its sparsity settings, and how a setting's folder name starts
    sparsity_field: ClassVar[str] = ""
    setting_prefix: ClassVar[str] = ""
    #: how the report writes a sparsity setting before its value (λ0.01, k=16)
    sparsity_symbol: ClassVar[str] = ""
    #: whether the sparsity setting is a loss coefficient warmed up like lambda (TopK's k is structural)
    coefficient_warms_up: ClassVar[bool] = True
    #: SAELens v6's name for it
    saelens_architecture: ClassVar[str] = ""
    #: whether Gemma Scope's params.npz (a JumpReLU SAE) can express it
    gemma_scope_form: ClassVar[bool] = False

    BASE_PARAMS: ClassVar[tuple[str, ...]] = ("W_enc", "W_dec", "b_enc", "b_dec")
    EXTRA_PARAMS: ClassVar[tuple[str, ...]] = ()
    #: the tensor names of the release formats, in order
    PARAM_NAMES: ClassVar[tuple[str, ...]] = BASE_PARAMS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.PARAM_NAMES = cls.BASE_PARAMS + cls.EXTRA_PARAMS

    def __init__(self, d_in: int, d_sae: int, generator: torch.Generator | None = None,
                 init: Mapping[str, Any] | None = None, **hyper: Any) -> None:
        """`init` holds what only initialisation reads (JumpReLU's threshold_init); `hyper` is kept."""
        if d_in <= 0 or d_sae <= 0:
            raise ValueError(f"d_in and d_sae must be positive, got {d_in}, {d_sae}")
        # Gemma Scope's init: W_dec He-uniform with unit rows, W_enc its transpose (untied after), zero biases.
        w_dec = torch.empty(d_sae, d_in, dtype=torch.float32)
        nn.init.kaiming_uniform_(w_dec, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        params = {
            "W_enc": w_dec.T.contiguous(),
            "W_dec": w_dec,
            "b_enc": torch.zeros(d_sae, dtype=torch.float32),
            "b_dec": torch.zeros(d_in, dtype=torch.float32),
        }
        params.update(self._init_extra(d_sae, **(init or {})))
        super().__init__()
        self._install(params, apply_b_dec_to_input=True, **hyper)

    # ------------------------------------------------------------------ per-architecture hooks

    @classmethod
    def setting_slug(cls, sparsity: float) -> str:
        """The folder name of one sparsity setting, e.g. `lambda_0.01` (the Gemma Scope layout's name for JumpReLU)."""
        return f"{cls.setting_prefix}{sparsity:g}"

    @classmethod
    @abstractmethod
    def for_sweep(cls, d_in: int, width: int, sparsity: float, cfg: Any,
                  generator: torch.Generator) -> "SparseAutoencoder":
        """A freshly initialised SAE for one point of a sweep trained with TrainConfig `cfg`."""

    def saelens_fields(self) -> dict[str, Any]:
        """Fields of SAELens's cfg.json that only this architecture has."""
        return {}

    @classmethod
    def hyper_from_saelens(cls, cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Constructor hyper-parameters from a SAELens cfg.json (`where` names the file in errors)."""
        return {}

    @classmethod
    def _init_extra(cls, d_sae: int, **init: Any) -> dict[str, Tensor]:
        return {}

    def _set_hyper(self, **hyper: Any) -> None:
        if hyper:
            raise TypeError(f"{type(self).__name__} takes no hyper-parameters, got {sorted(hyper)}")

    def hyperparams(self) -> dict[str, Any]:
        """What, besides the tensors, rebuilds this SAE (stored in checkpoints and release configs)."""
        return {}

    @abstractmethod
    def activation(self, z: Tensor) -> Tensor:
        """Latent codes f from float32 pre-activations z."""

    @abstractmethod
    def training_loss(self, x: Tensor, coefficient: float) -> tuple[dict[str, Tensor], Tensor]:
        """({"loss", "mse", "sparsity", "l0"}, f) on normalised activations; `coefficient` is the warmed-up
        sparsity coefficient (ignored by architectures whose sparsity is structural)."""

    @abstractmethod
    def sparse_pattern(self, z: Tensor) -> Pattern:
        """The entries of pre-activations z (no grad) the sparse step must touch: every one where f != 0,
        and any other a gradient needs (JumpReLU's kernel window)."""

    @abstractmethod
    def sparse_training_loss(self, x: Tensor, coefficient: float) -> tuple[dict[str, Tensor], Tensor]:
        """`training_loss` by the sparse step (sae/sparse_step.py): the same losses, and the latents that
        fired on this batch ([d_sae] bool) instead of the dense f."""

    def _fold_extra(self, scale: float) -> dict[str, Tensor]:
        return {}

    @torch.no_grad()
    def after_step(self) -> None:
        """Projections that keep parameters feasible after an optimiser step."""
        self.normalize_decoder()

    # ------------------------------------------------------------------ shared

    def _install(self, params: Mapping[str, Tensor], *, apply_b_dec_to_input: bool, **hyper: Any) -> None:
        names = self.PARAM_NAMES
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"missing SAE tensors: {missing}")
        d_in, d_sae = params["W_enc"].shape
        expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
        expected.update({name: (d_sae,) for name in self.EXTRA_PARAMS})
        for name, shape in expected.items():
            if tuple(params[name].shape) != shape:
                raise ValueError(f"{name} has shape {tuple(params[name].shape)}, expected {shape}")
        self.d_in = int(d_in)
        self.d_sae = int(d_sae)
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self._set_hyper(**hyper)
        for name in names:
            value = torch.as_tensor(params[name]).detach().to(torch.float32, copy=True).contiguous()
            setattr(self, name, nn.Parameter(value))

    def pre_acts(self, x: Tensor) -> Tensor:
        """Encoder pre-activations, always float32: thresholds and kernel windows of width 1e-3 need the
        precision even when the matmul runs in bfloat16 under autocast."""
        bias = self.b_enc
        if self.apply_b_dec_to_input:
            # (x - b_dec) @ W_enc regrouped: b_dec's gradient then costs one vector-matrix product instead of
            # a [B, d_in] x [d_in, d_sae] matmul, a sixth of a dense step.
            bias = bias - self.b_dec @ self.W_enc
        return F.linear(x, self.W_enc.T, bias).float()

    def encode(self, x: Tensor) -> Tensor:
        return self.activation(self.pre_acts(x))

    def decode(self, f: Tensor) -> Tensor:
        return F.linear(f, self.W_dec.T, self.b_dec)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    @staticmethod
    def _mse(x_hat: Tensor, x: Tensor) -> Tensor:
        return (x_hat.float() - x).pow(2).sum(-1).mean()

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Rows are renormalised after each step, so a gradient along a row would only be undone: drop it."""
        grad = self.W_dec.grad
        if grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
        grad -= (grad * unit).sum(dim=1, keepdim=True) * unit

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit decoder rows pin the scale of each latent, so a sparsity penalty cannot be dodged by rescaling."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    @torch.no_grad()
    def folded(self, scale: float) -> "SparseAutoencoder":
        """The same SAE expressed on raw activations x_raw = scale * x.

        With z' = x_raw @ W_enc + b_enc' we want z' = scale * z, so b_enc' = C b_enc - C (b_dec @ W_enc)
        when b_dec was subtracted from the input (nothing to remove otherwise); then the active set is
        unchanged once thresholds scale too (positive homogeneity of every activation here), f' = C f, and
        x_hat' = C x_hat once b_dec' = C b_dec.
        """
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        c = float(scale)
        b_enc = c * self.b_enc
        if self.apply_b_dec_to_input:
            b_enc = b_enc - c * (self.b_dec @ self.W_enc)
        tensors = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_enc": b_enc, "b_dec": c * self.b_dec}
        tensors.update(self._fold_extra(c))
        return self.from_tensors(tensors, apply_b_dec_to_input=False, **self.hyperparams())

    def state_tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).detach() for name in self.PARAM_NAMES}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], apply_b_dec_to_input: bool = False,
                     **hyper: Any) -> "SparseAutoencoder":
        """Copies of `tensors` (as float32, on their device); no random init, so loading leaves RNGs alone."""
        sae = cls.__new__(cls)
        nn.Module.__init__(sae)
        sae._install(tensors, apply_b_dec_to_input=apply_b_dec_to_input, **hyper)
        return sae

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.hyperparams().items())
        return f"d_in={self.d_in}, d_sae={self.d_sae}, apply_b_dec_to_input={self.apply_b_dec_to_input}{extra}"
