"""The task runner's one Ray remote function per resource shape (flows/ray_runner.py)."""
from __future__ import annotations

import time
from uuid import uuid4

import ray
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, State
from prefect_ray.task_runners import PrefectRayFuture

from flows.ray_runner import ShapedRayTaskRunner, _settled_upstream


def test_units_of_one_resource_shape_share_one_remote_function():
    runner = ShapedRayTaskRunner()
    one = runner._remote({"num_cpus": 1, "max_retries": 3})
    assert runner._remote({"max_retries": 3, "num_cpus": 1}) is one
    # Ray's function descriptor is made from the remote function's uuid: one uuid, one scheduling class, so
    # Ray runs the shape's units in the order they are submitted
    gpu = runner._remote({"num_cpus": 1, "num_gpus": 1, "max_retries": 3})
    assert gpu is not one and gpu._uuid != one._uuid
    env = {"num_cpus": 1, "runtime_env": {"env_vars": {"A": "1"}}}
    assert runner._remote(env) is runner._remote(dict(env)) is not one
    assert runner.duplicate()._remote({"num_cpus": 1, "max_retries": 3}) is not one  # a runner's own


def test_a_finished_upstream_reaches_the_worker_as_its_state_a_running_one_as_a_ray_argument(ray_session):
    """The worker's task engine gets nothing to `ray.get` for an upstream that has finished (a run once hung
    in that call); one still running stays a future and its ref a top-level argument, which Ray waits for."""
    done = PrefectRayFuture(task_run_id=uuid4(), wrapped_future=ray.put(Completed(data=1)))
    slow = ray.remote(num_cpus=0)(lambda: time.sleep(30)).remote()
    running = PrefectRayFuture(task_run_id=uuid4(), wrapped_future=slow)
    try:
        wait_for, pending = _settled_upstream([done, running])
        assert isinstance(wait_for[0], State) and wait_for[0].is_completed() and wait_for[1] is running
        assert pending == [slow]
        assert _settled_upstream(None) == (None, [])
    finally:
        ray.cancel(slow, force=True)


def _tagged_flow(tag: str, n: int):
    @task(cache_policy=NO_CACHE, persist_result=False, tags=[tag])
    def held_slots(i: int) -> int | None:
        """The slots the server counts as taken on this tag's limit while this task runs (None: no limit)."""
        with get_client(sync_client=True) as client:
            try:
                return client.read_global_concurrency_limit_by_name(f"tag:{tag}").active_slots
            except ObjectNotFound:
                return None

    @flow(task_runner=ShapedRayTaskRunner())
    def tagged() -> tuple[list[int | None], dict]:
        runner = FlowRunContext.get().task_runner
        futures = [held_slots.submit(i) for i in range(n)]
        return [f.result() for f in futures], dict(runner._unlimited_tags)

    return tagged


def test_a_stage_tag_without_a_concurrency_limit_is_asked_once_and_one_with_a_limit_is_honoured(ray_session):
    """The runner tells the worker's engine a tag has no limit only when the server has none for it; a tag
    concurrency limit someone set is still taken by each of its tasks while it runs."""
    tag = f"free-{uuid4().hex[:8]}"
    assert _tagged_flow(tag, 2)() == ([None, None], {frozenset({tag}): True})
    limited = f"limited-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=f"tag:{limited}", limit=1))
        try:
            assert _tagged_flow(limited, 2)() == ([1, 1], {frozenset({limited}): False})
        finally:
            client.delete_global_concurrency_limit_by_name(f"tag:{limited}")
