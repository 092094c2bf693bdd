"""The application: the CLI, the Prefect flows, and the code a Ray worker imports to run a unit.

Every process of a run starts here (the CLI, each Ray worker unpickling a unit's task, a Prefect deployment's
flow run), so this is where the interpreter is set up for them. The cyclic garbage collector's default gen-0
threshold (700 allocations) runs it thousands of times while torch, transformers and Prefect import, each
full pass over every object imported so far: a fifth to a quarter of a cold worker's start-up CPU
(benchmarks/cold_start.py, BENCHMARKS.md "Cold processes"). Units make few reference cycles, so a higher
threshold costs them nothing measurable.
"""
import gc

gc.set_threshold(10_000, 10, 10)
