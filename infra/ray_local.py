"""Starting or joining Ray for a run, with settings measured to work here (docs/architecture.md, "How a unit runs")."""
from __future__ import annotations

import logging
import os

import ray

from infra.config import OrchestrationConfig

# Prefect variables the workers need to report to the driver's server, not start their own.
_FORWARDED_ENV = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK",
                  "PREFECT_LOGGING_LEVEL")
# Paths of the driver's machine: a local instance's workers share them; a cluster's nodes keep their own.
_LOCAL_ONLY_ENV = ("SCOPEFLOW_CACHE",)


def init_ray(cfg: OrchestrationConfig) -> bool:
    """Initialise Ray once per driver; the stage flows' RayTaskRunners reuse it. Returns whether this call
    started it (and so should shut it down)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # Ray 2.60 enables token auth on new local instances
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    forwarded = _FORWARDED_ENV if cfg.ray_address else _FORWARDED_ENV + _LOCAL_ONLY_ENV
    env_vars = {k: os.environ[k] for k in forwarded if k in os.environ}
    # WARNING: Ray's start-up INFO lines would stand between the user and the run's own output
    kwargs = dict(runtime_env={"env_vars": env_vars}, log_to_driver=False, namespace="scopeflow",
                  logging_level=logging.WARNING)
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, **kwargs)
    else:
        # "local": a new instance of our own, even when another Ray runs on this machine (ray.init() would join it)
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, object_store_memory=256 * 2**20,
                 **kwargs)
    return True
