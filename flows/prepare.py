"""Checks and resolution done once in the driver before any unit runs, so bad input fails in one line
before anything is scheduled or written."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from flows.config import ConfigError, SuiteConfig
from storage.layout import SUITE_JSON
from storage.root import StorageRoot
from tasks.lm.corpus import expand_paths
from tasks.lm.model import load_config, resolve_model_path
from tasks.lm.sites import n_layers, site_table
from tasks.units import suite_fingerprint

_VERSIONED = ("torch", "transformers", "ray", "prefect", "prefect-ray", "zarr", "pyarrow", "pydantic", "scopeflow")


@dataclass
class PreparedSuite:
    root: StorageRoot
    layers: list[int]
    model_name: str
    fingerprint: str


def open_root(cfg: SuiteConfig) -> StorageRoot:
    return StorageRoot(cfg.storage.root, cfg.storage.storage_options)


def prepare_suite(cfg: SuiteConfig, config_path: str, write: bool = True) -> PreparedSuite:
    try:
        model_path = resolve_model_path(cfg.model.name_or_path)
        hf_config = load_config(cfg.model)
        site_table(hf_config.model_type)
        layers = cfg.resolved_layers(n_layers(hf_config))
    except (ValueError, FileNotFoundError, OSError) as e:
        raise ConfigError(f"{config_path}: {str(e).splitlines()[0]}") from None
    try:
        expand_paths(cfg.corpus, cfg.storage.storage_options)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"{config_path}: {e}") from None
    root = open_root(cfg)
    fp = suite_fingerprint(cfg)
    # the name SAELens/Neuronpedia know the model by: a hub id as given, else the folder name
    model_name = cfg.model.name_or_path if model_path == cfg.model.name_or_path else Path(model_path).name
    if write:
        versions = {}
        for pkg in _VERSIONED:
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        root.write_json(SUITE_JSON, {
            "config": cfg.model_dump(mode="json"), "fingerprint": fp, "config_path": str(config_path),
            "resolved": {"layers": layers, "model_path": model_path, "model_type": hf_config.model_type},
            "versions": versions, "python": platform.python_version(),
            "written_at": datetime.now(timezone.utc).isoformat()})
    return PreparedSuite(root=root, layers=layers, model_name=model_name, fingerprint=fp)
