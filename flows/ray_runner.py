"""prefect-ray's RayTaskRunner with one Ray remote function per resource shape instead of one per task.

prefect-ray 0.4 wraps its task entry point in a fresh `ray.remote(...)` on every submit (PrefectHQ/prefect
#5653, open). Each RemoteFunction has a uuid of its own, so every unit was exported to Ray's GCS and fetched
by its worker anew (a few tenths of a second a unit here), and every unit was a scheduling class of its own,
which Ray dispatches in no particular order: a tiny run had shuffle units (which unlock training) waiting
behind evaluations until the end. One remote function per shape makes the units of a shape one class, which
Ray runs in the order the runner submits them.

An upstream future that has already finished when its dependent is submitted (every one, as scopeflow's
runner submits a unit once its inputs have settled) is handed to the worker as its final Prefect state, not
as the future: the worker's task engine then has nothing to `ray.get`. Seen in a fresh `make run`: a worker
blocked for minutes in `ray.get` on the nested ObjectRef of an upstream task that had long completed, so
the run never ended. Upstream tasks still running are passed as futures and their refs as the remote call's
arguments, so Ray starts the task only once they are done (prefect-ray does that for parameters only).

In the worker, Prefect's task engine rebuilt the driver's settings from the shipped context and opened two
API clients per task, each loading certifi's CA bundle into a new SSL context though the server is http://
(~80 ms a task in a profile of the worker). A worker now keeps the settings and one open client per
distinct driver settings, and hands both to the engine as its current contexts, which the engine reuses
instead of building its own: 107 -> 15 ms of the worker's CPU a unit (benchmarks/prefect_unit_overhead.py).

Before each task, Prefect's engine asks the server for the task's tag concurrency limits, trusting a "no
limits" answer for 5 s. scopeflow tags each unit with its stage; with the server's SQLite busy with the
run's events, 6 of a tiny run's 52 such calls took 1.8-2.4 s here (13.4 s in all, a worker idle
meanwhile). The runner asks once per set of tags whether a limit exists; a task none of whose tags has one
starts with the engine's own "no limits" answer in place, and a tag that has a limit is checked by Prefect
as before (a limit created during a run applies from the next run).
"""
from __future__ import annotations

import json
from typing import Any, Iterable
from uuid import uuid4

import ray
from prefect.client.orchestration import get_client
from prefect.concurrency import services as concurrency_services
from prefect.context import SettingsContext, SyncClientContext, TagsContext, serialize_context
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectFuture
from prefect.utilities.engine import collect_task_run_inputs_sync
from prefect_ray import RayTaskRunner
from prefect_ray.context import RemoteOptionsContext
from prefect_ray.task_runners import PrefectRayFuture


class ShapedRayTaskRunner(RayTaskRunner):
    """Submits like RayTaskRunner.submit (same context, same upstream exchange, same entry point), but
    reuses the remote function of a resource shape."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._remote_by_shape: dict[str, Any] = {}
        self._unlimited_tags: dict[frozenset[str], bool] = {}

    def _remote(self, options: dict[str, Any]) -> Any:
        shape = json.dumps(options, sort_keys=True, default=str)  # a runtime_env is a dict
        if shape not in self._remote_by_shape:
            decorate = ray.remote(**options) if options else ray.remote
            self._remote_by_shape[shape] = decorate(_run_in_worker)
        return self._remote_by_shape[shape]

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Iterable[PrefectFuture[Any]] | None = None,
               dependencies: dict[str, set[Any]] | None = None) -> PrefectRayFuture:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        task_run_id = uuid4()
        task_inputs = {k: collect_task_run_inputs_sync(v, future_cls=PrefectRayFuture) for k, v in parameters.items()}
        context = serialize_context(asset_ctx_kwargs={"task": task, "task_run_id": task_run_id,
                                                      "task_inputs": task_inputs, "copy_to_child_ctx": True})
        parameters, upstream_refs = self._exchange_prefect_for_ray_futures(parameters)
        wait_for, pending = _settled_upstream(wait_for)
        upstream_refs += pending
        remote = self._remote(RemoteOptionsContext.get().current_remote_options or {})
        tags = frozenset(task.tags) | frozenset(TagsContext.get().current_tags)
        ref = remote.options(name=task.name).remote(*upstream_refs, task=task, task_run_id=task_run_id,
                                                    parameters=parameters, wait_for=wait_for,
                                                    dependencies=dependencies, context=context,
                                                    no_tag_limits=tags if self._no_tag_limits(tags) else None)
        return PrefectRayFuture(task_run_id=task_run_id, wrapped_future=ref)

    def _no_tag_limits(self, tags: frozenset[str]) -> bool:
        """Whether none of `tags` has a concurrency limit on the server (asked once per set of tags)."""
        if not tags:
            return False
        if tags not in self._unlimited_tags:
            with get_client(sync_client=True) as client:
                self._unlimited_tags[tags] = not any(_has_limit(client, f"tag:{t}") for t in tags)
        return self._unlimited_tags[tags]


class _WorkerSession:
    """The Prefect settings and API client of the driver whose tasks this worker process runs now."""

    key: str | None = None
    settings: SettingsContext | None = None
    client: SyncClientContext | None = None

    @classmethod
    def current(cls, serialized_settings: dict[str, Any]) -> tuple[SettingsContext, SyncClientContext]:
        key = json.dumps(serialized_settings, sort_keys=True, default=str)
        if key != cls.key:
            if cls.client is not None:
                cls.client.client.__exit__(None, None, None)
            cls.key, cls.settings = None, SettingsContext(**serialized_settings)
            with cls.settings:
                cls.client = SyncClientContext()  # Prefect's own client and TLS settings for these settings
                cls.client.client.__enter__()
                cls.client.client.raise_for_api_version_mismatch_once()
            cls.key = key
        return cls.settings, cls.client


def _run_in_worker(*upstream_refs: Any, context: dict[str, Any], no_tag_limits: frozenset[str] | None,
                   **kwargs: Any) -> Any:
    """prefect-ray's entry point, inside this worker's settings and client (see the module docstring): the
    engine's `get_client` and `SyncClientContext.get_or_create` return the current client context; and
    with `no_tag_limits` (the task's tags, none of which has a limit) the engine's cached answer for them."""
    settings, client = _WorkerSession.current(context["settings_context"])
    if no_tag_limits:
        with concurrency_services._cache_lock:  # what the engine's acquisition reads before asking the server
            concurrency_services._no_limits_cache[frozenset(f"tag:{t}" for t in no_tag_limits)] = True
    with settings:
        token = SyncClientContext.__var__.set(client)
        try:
            return RayTaskRunner._run_prefect_task(*upstream_refs, context={**context, "settings_context": {}},
                                                   **kwargs)
        finally:
            SyncClientContext.__var__.reset(token)


def _has_limit(client: Any, name: str) -> bool:
    try:
        client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        return False
    return True


def _settled_upstream(wait_for: Iterable[Any] | None) -> tuple[list[Any] | None, list[Any]]:
    """`wait_for` with each finished PrefectRayFuture replaced by its final state (which carries its task
    run id, so the dashboard still links the two runs), and the Ray refs of those not finished yet."""
    if wait_for is None:
        return None, []
    out, pending = [], []
    for f in wait_for:
        if isinstance(f, PrefectRayFuture):
            ready, _ = ray.wait([f.wrapped_future], timeout=0)
            if ready:
                f.wait()
                out.append(f.state)
                continue
            pending.append(f.wrapped_future)
        out.append(f)
    return out, pending
