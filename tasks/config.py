"""The settings every stage reads, composed from each package's own config.

Each stage's fingerprint hashes only the slices of this that shape its output (tasks/plan.py).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sae.config import TrainConfig
from storage.config import StorageConfig

SiteName = Literal["res", "att", "mlp"]
SITES: tuple[str, ...] = ("res", "att", "mlp")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorpusConfig(_Strict):
    """Documents to tokenize: parquet, jsonl or txt files (local paths, globs, or s3:// URLs), or the
    embedded tiny corpus. txt files hold one document per blank-line-separated paragraph."""

    paths: list[str] = Field(default_factory=lambda: ["embedded:tiny-corpus"], min_length=1)
    text_field: str = "text"
    ctx: int = Field(128, ge=2, description="tokens per sequence, BOS included")
    n_eval_seqs: int = Field(64, ge=1)
    max_train_seqs: int | None = Field(None, ge=1)


class ModelConfig(_Strict):
    """A Hugging Face causal LM: a local folder, a hub id (e.g. google/gemma-2-2b), or the embedded model."""

    name_or_path: str = "embedded:tiny-gemma2"
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"


class ExtractConfig(_Strict):
    seqs_per_shard: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1, description="sequences per forward pass")
    writers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="processes writing a unit's storage objects (1: the unit's own writer thread); "
                            "auto: one per CPU of the unit beyond the forward pass's (tasks/stages/extract.py)")


#: settings that change how a stage runs, not what it stores: no fingerprint hashes them
RUNTIME_ONLY: dict[str, set[str]] = {"extract": {"writers"}}


class ShuffleConfig(_Strict):
    bucket_rows: int = Field(1 << 20, ge=1, description="rows permuted together (Gemma Scope: ~1e6)")
    workers: int = Field(2, ge=1, description="buckets shuffled concurrently inside one unit")


#: the evaluation rows' `model` for the model the suite trains its SAEs on
SUITE_MODEL = "base"


class EvalModelConfig(_Strict):
    """A further model of the suite's architecture that every SAE is also spliced into, on text of its own:
    Gemma Scope's check that a base model's SAEs transfer to its instruction-tuned variant."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="its evaluation rows' `model`")
    model: ModelConfig
    paths: list[str] = Field(min_length=1, description="its evaluation text: jsonl, parquet or txt files, local "
                                                       "or s3://, or embedded:tiny-chats")
    chat: bool = Field(False, description="each document is a conversation (`messages_field`: a list of {role, "
                                          "content}) written out by the model's own chat template")
    text_field: str = "text"
    messages_field: str = "messages"
    n_seqs: int = Field(64, ge=1, description="sequences of corpus.ctx tokens evaluated (fewer if the text is shorter)")

    @field_validator("name")
    @classmethod
    def _not_the_suite_model(cls, v: str) -> str:
        if v == SUITE_MODEL:
            raise ValueError(f"{SUITE_MODEL!r} names the suite's own model in the evaluation rows; pick another name")
        return v


class EvaluateConfig(_Strict):
    n_seqs: int | None = Field(None, ge=1, description="eval sequences used (default: all of tokens/eval)")
    batch_size: int = Field(16, ge=1)
    dense_threshold: float = Field(0.1, gt=0, le=1)
    models: list[EvalModelConfig] = Field(default_factory=list, description="further models every SAE is also "
                                                                          "evaluated on, one row per (SAE, model)")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v: list[EvalModelConfig]) -> list[EvalModelConfig]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model name in {names}")
        return v


class InspectConfig(_Strict):
    """Per latent of every SAE, on evaluate's held-out tokens: statistics, top-activating contexts and the
    output tokens its decoder row boosts and suppresses (docs/architecture.md, "Latents")."""

    top_k: int = Field(16, ge=1, description="activating contexts kept per latent")
    window: int = Field(8, ge=0, description="token ids kept on each side of a context's position")
    n_output_tokens: int = Field(10, ge=1, description="boosted and suppressed output tokens kept per latent")
    batch_size: int = Field(16, ge=1, description="sequences per forward pass")


class StagesConfig(_Strict):
    name: str = "tiny"
    seed: int = 0
    storage: StorageConfig = Field(default_factory=StorageConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sites: list[SiteName] = Field(default_factory=lambda: list(SITES), min_length=1)
    layers: list[int] | Literal["all"] = "all"
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    shuffle: ShuffleConfig = Field(default_factory=ShuffleConfig)
    sae: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    inspect: InspectConfig = Field(default_factory=InspectConfig)

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate site in {v}")
        return v

    @field_validator("layers")
    @classmethod
    def _non_negative_layers(cls, v):
        if v != "all":
            bad = [layer for layer in v if layer < 0]
            if bad:
                raise ValueError(f"layer {bad[0]} is negative (layers are zero-indexed)")
            if len(set(v)) != len(v):
                raise ValueError(f"duplicate layer in {v}")
        return v

    def resolved_layers(self, n_layers: int) -> list[int]:
        """Concrete layers; a layer past the model's depth is a config error, named."""
        if self.layers == "all":
            return list(range(n_layers))
        for layer in self.layers:
            if layer >= n_layers:
                raise ValueError(f"layers: layer {layer} is out of range for {self.model.name_or_path} "
                                 f"({n_layers} layers, 0..{n_layers - 1})")
        return sorted(self.layers)
