"""JumpReLU SAE math, the multi-SAE trainer, metrics and release formats (DESIGN section 5).

Pure torch + numpy + safetensors + pydantic, so the same code runs inside a Ray worker, a test, or a
notebook without the orchestration stack.
"""
from .config import TrainConfig
from .export import load_gemma_scope_npz, load_saelens, save_gemma_scope_npz, save_saelens
from .jumprelu import JumpReLUSAE
from .metrics import SAEMetrics
from .trainer import TrainedSAE, train_saes

__all__ = [
    "TrainConfig",
    "JumpReLUSAE",
    "TrainedSAE",
    "train_saes",
    "SAEMetrics",
    "save_gemma_scope_npz",
    "load_gemma_scope_npz",
    "save_saelens",
    "load_saelens",
]
