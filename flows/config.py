"""The suite config: the stages' settings (tasks/) plus how they are orchestrated, read from YAML."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator

from infra.config import OrchestrationConfig
from storage.errors import InputError
from tasks.config import StagesConfig
from tasks.registry import STAGE_NAMES, get_stage

DEFAULT_CONFIG = "configs/tiny.yaml"


class ConfigError(InputError):
    """A config problem, phrased as one line that names the file and the field."""


class SuiteConfig(StagesConfig):
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    @field_validator("orchestration")
    @classmethod
    def _known_stages(cls, v: OrchestrationConfig) -> OrchestrationConfig:
        """Per-stage settings name stages of the registry: a misspelt one is an error, never ignored."""
        for name in ("cpus_per_unit", "gpus_per_unit"):
            for stage in getattr(v, name):
                if stage not in STAGE_NAMES:
                    raise ValueError(f"{name}: unknown stage {stage!r} (one of {', '.join(STAGE_NAMES)})")
        return v

    def unit_resources(self, stage: str) -> tuple[float, float]:
        """(CPUs, GPUs) per unit of a stage: the config's, else the registry's default."""
        default = get_stage(stage)
        orch = self.orchestration
        return orch.cpus_per_unit.get(stage, default.cpus), orch.gpus_per_unit.get(stage, default.gpus)


def _one_line(path: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    value = first.get("input")
    if first["type"] not in ("missing", "extra_forbidden") and not isinstance(value, (dict, list)):
        msg += f" (got {value!r})"
    more = len(err.errors()) - 1
    return f"{path}: {loc}: {msg}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _merged(base: dict, override: dict) -> dict:
    """`override` over `base`, section by section; lists and values replace, mappings merge."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's fields, with `extends: other.yaml` (relative to the file) resolved underneath them,
    so a variant states only what it changes."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    if p.resolve() in seen:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(str(s) for s in seen)}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: expected a file name (got {parent!r})")
    return _merged(_read_yaml(p.parent / parent, seen + (p.resolve(),)), data)


def load_suite_config(path: str | Path) -> SuiteConfig:
    data = _read_yaml(path)
    try:
        return SuiteConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(str(path), e)) from None
