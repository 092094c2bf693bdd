"""The task runner's one Ray remote function per resource shape (flows/ray_runner.py)."""
from __future__ import annotations

from flows.ray_runner import ShapedRayTaskRunner


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
