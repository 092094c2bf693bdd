"""The registry of SAE architectures: name -> class. Every per-architecture lookup (folder names, sparsity
fields, SAELens names, what Gemma Scope's format can hold) reads the class's facts through here, so a new
architecture is one module plus one line below.
"""
from __future__ import annotations

from .base import SparseAutoencoder
from .baselines import ReLUSAE, TopKSAE
from .jumprelu import JumpReLUSAE

#: in the order the report lists them
ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {cls.architecture: cls for cls in (JumpReLUSAE, TopKSAE, ReLUSAE)}


def architecture_class(name: str) -> type[SparseAutoencoder]:
    """The class of an architecture name; an unknown name is an error naming the known ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown SAE architecture {name!r} (known: {', '.join(ARCHITECTURES)})") from None


def from_saelens_name(saelens_name: str) -> type[SparseAutoencoder]:
    """Our class for SAELens's architecture name (SAELens's `standard` is our ReLU + L1)."""
    for cls in ARCHITECTURES.values():
        if cls.saelens_architecture == saelens_name:
            return cls
    known = sorted(cls.saelens_architecture for cls in ARCHITECTURES.values())
    raise ValueError(f"architecture={saelens_name!r} is not one of {known}")
