"""What Prefect costs a unit on scopeflow's runner: N no-op tasks through `ShapedRayTaskRunner` on a local
one-CPU Ray instance and a local Prefect server, after a warm-up flow; the CPU time each process (driver,
Ray worker, Prefect server, Ray's daemons) spent on them, per task.

    .venv/bin/python benchmarks/prefect_unit_overhead.py [--tasks 40]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import psutil
import ray

from infra.config import OrchestrationConfig
from infra.prefect_server import prefect_api
from infra.ray_local import init_ray


def _cpu_by_process() -> dict[tuple[int, str], float]:
    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[(p.pid, " ".join(p.cmdline())[:60])] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--tasks", type=int, default=40)
    n = args.parse_args().tasks
    os.environ.pop("PREFECT_API_URL", None)  # a server of its own
    with prefect_api(Path(tempfile.mkdtemp())):
        # Prefect reads its settings when first imported: after the server's URL is set
        from prefect import flow, task
        from prefect.cache_policies import NO_CACHE
        from prefect_ray.context import remote_options

        from flows.ray_runner import ShapedRayTaskRunner

        init_ray(OrchestrationConfig(num_cpus=1))  # as a run starts it: the workers report to `url`

        @task(cache_policy=NO_CACHE, persist_result=False)
        def noop(i: int) -> int:
            return i

        @flow(task_runner=ShapedRayTaskRunner())
        def tasks() -> list[int]:
            futures = []
            for i in range(n):
                with remote_options(num_cpus=1):
                    futures.append(noop.with_options(task_run_name=f"noop:{i}").submit(i))
            return [f.result() for f in futures]

        tasks()  # the worker's start and imports
        time.sleep(2)
        before, t0 = _cpu_by_process(), time.time()
        tasks()
        time.sleep(3)  # the server takes in the last events
        after = _cpu_by_process()
        ray.shutdown()
    total = 0.0
    print(f"{n} no-op tasks in {time.time() - t0 - 3:.1f} s; CPU per task by process:")
    for key, cpu in sorted(after.items(), key=lambda kv: -(kv[1] - before.get(kv[0], 0.0))):
        spent = cpu - before.get(key, 0.0)
        total += spent
        if spent > 0.05:
            print(f"  {spent * 1000 / n:5.0f} ms  {key[1]}")
    print(f"  {total * 1000 / n:5.0f} ms  in all")


if __name__ == "__main__":
    main()
