"""Units as Prefect tasks on Ray: the runner's executor in the flows.

Each unit is one Prefect task run named `stage:unit` and tagged with its stage, submitted on prefect-ray's
`RayTaskRunner` with the stage's Ray resources and the task runs of the units it reads as `wait_for`.
Prefect retries a unit that raised a transient error, with backoff; an input error (bad data, a bad value)
fails at once. Ray's `max_retries` covers a worker that died (OOM, SIGKILL, a lost node), which is no
Python exception.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import ray
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect_ray.context import remote_options

from flows.config import SuiteConfig
from infra.config import OrchestrationConfig
from infra.ray_local import init_ray
from storage.errors import is_input_error
from storage.root import StorageRoot
from tasks.execute import run_unit
from tasks.registry import get_stage
from tasks.units import UnitSpec


@task(name="unit", cache_policy=NO_CACHE, persist_result=False)
def unit_task(cfg: SuiteConfig, spec: UnitSpec, root: StorageRoot, run_id: str) -> dict:
    # Prefect passes paths and specs here, never arrays: the unit reads its data itself.
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    record = run_unit(cfg, spec, root, run_id=run_id, node=node)
    return {"unit": spec.unit, "duration_s": record.duration_s, "metrics": record.metrics}


def _worker_pid() -> int:
    """Nothing: loading this function in a worker imports this module, and with it all a unit needs. (A
    module-level function that is not itself the remote function: Ray's pickler sends that by reference,
    so the worker imports its module. Decorated in place, it went by value and the worker imported nothing.)"""
    return os.getpid()


_warm_worker = ray.remote(num_cpus=1)(_worker_pid)


def warm_workers() -> None:
    """Start a local instance's workers now, each importing the unit code, while the driver still sets the
    run up: Ray starts them only when a unit arrives, so the second worker's 5-15 s start (Python, torch,
    transformers, Prefect) came after the first unit and left it idle. Not awaited."""
    for _ in range(int(ray.cluster_resources().get("CPU", 1))):
        _warm_worker.remote()


@contextlib.contextmanager
def ray_for_run(cfg: OrchestrationConfig) -> Iterator[None]:
    """Start or join Ray for a run (a new local instance's workers start importing at once), and shut down
    what this started; within a Ray already started (by the CLI, or a test's), nothing."""
    started = init_ray(cfg)
    if started and not cfg.ray_address:
        warm_workers()
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def retry_transient(task, task_run, state) -> bool:
    """Retry what may pass next time (I/O, network); an input error would only fail again."""
    return not is_input_error(state.result(raise_on_failure=False))


class PrefectRayExecutor:
    """Submits units as Prefect tasks inside a flow whose task runner is a RayTaskRunner."""

    def __init__(self, cfg: SuiteConfig, root: StorageRoot, run_id: str) -> None:
        self.cfg, self.root, self.run_id = cfg, root, run_id

    def ray_options(self, stage: str) -> dict[str, Any]:
        """What Ray gets for a unit of `stage`: its resources, retries, and its workers' environment."""
        cpus, gpus = self.cfg.unit_resources(stage)
        options: dict[str, Any] = {"num_cpus": cpus, "max_retries": self.cfg.orchestration.worker_retries}
        if gpus:
            options["num_gpus"] = gpus
        stage_env = get_stage(stage).env
        env = stage_env(self.cfg) if stage_env else {}
        if env:  # merged into the run's own runtime environment; Ray keeps such workers apart from the rest
            options["runtime_env"] = {"env_vars": dict(env)}
        return options

    def submit(self, spec: UnitSpec, upstream: list[Any], done: Callable[[], None]) -> Any:
        orch = self.cfg.orchestration
        options = self.ray_options(spec.stage)
        runnable = unit_task.with_options(task_run_name=f"{spec.stage}:{spec.unit}", tags=[spec.stage],
                                          retries=orch.task_retries, retry_delay_seconds=orch.retry_delay_seconds,
                                          retry_condition_fn=retry_transient)
        with remote_options(**options):
            future = runnable.submit(self.cfg, spec, self.root, self.run_id, wait_for=upstream)
        future.add_done_callback(lambda _: done())
        return future

    def cancel(self, future: Any) -> None:
        """Kill the unit's worker: Ray does not retry a cancelled task."""
        try:
            ray.cancel(future.wrapped_future, force=True)
        except Exception:  # finished meanwhile, or its worker is already gone
            pass
