"""Sparse autoencoders -- JumpReLU and its TopK and ReLU + L1 baselines -- the sweep trainer with
checkpoint/resume, metrics and release formats (docs/architecture.md, "The SAE math").

Pure torch + numpy + safetensors + pydantic, so the same code runs inside a Ray worker, a test, or a
notebook without the orchestration stack.
"""
from .architectures import SweepPoint, sweep_points
from .base import SparseAutoencoder
from .baselines import ReLUSAE, TopKSAE
from .checkpoint import CheckpointStore, FileCheckpoint
from .config import TrainConfig
from .data import ArrayBatches
from .export import load_gemma_scope_npz, load_saelens, save_gemma_scope_npz, save_saelens
from .jumprelu import JumpReLUSAE
from .latents import LatentStats, LatentSummary
from .metrics import SAEMetrics
from .registry import ARCHITECTURES, architecture_class
from .splitting import nearest_by_decoder_cosine
from .trainer import TrainedSAE, train_saes

__all__ = [
    "TrainConfig",
    "SparseAutoencoder",
    "JumpReLUSAE",
    "TopKSAE",
    "ReLUSAE",
    "ARCHITECTURES",
    "architecture_class",
    "SweepPoint",
    "sweep_points",
    "ArrayBatches",
    "CheckpointStore",
    "FileCheckpoint",
    "TrainedSAE",
    "train_saes",
    "SAEMetrics",
    "LatentStats",
    "LatentSummary",
    "nearest_by_decoder_cosine",
    "save_gemma_scope_npz",
    "load_gemma_scope_npz",
    "save_saelens",
    "load_saelens",
]
