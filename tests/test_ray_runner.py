"""The task runner's one Ray remote function per resource shape (flows/ray_runner.py)."""
from __future__ import annotations

import time
from uuid import uuid4

import ray
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
