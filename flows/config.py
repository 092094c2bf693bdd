"""The suite config: the stages' settings (tasks/) plus how they are orchestrated, read from YAML."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from infra.config import OrchestrationConfig
from tasks.config import StagesConfig

DEFAULT_CONFIG = "configs/tiny.yaml"


class ConfigError(ValueError):
    """A config problem, phrased as one line that names the file and the field."""


class SuiteConfig(StagesConfig):
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)


def _one_line(path: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    value = first.get("input")
    if first["type"] not in ("missing", "extra_forbidden") and not isinstance(value, (dict, list)):
        msg += f" (got {value!r})"
    more = len(err.errors()) - 1
    return f"{path}: {loc}: {msg}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def load_suite_config(path: str | Path) -> SuiteConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    try:
        return SuiteConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(str(path), e)) from None
