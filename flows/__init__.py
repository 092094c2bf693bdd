"""The application: the CLI, the Prefect flows, and the code a Ray worker imports to run a unit.

Every process of a run starts here (the CLI, each Ray worker unpickling a unit's task, a Prefect deployment's
flow run), so this is where the interpreter is set up for them. At the default gen-0 threshold (700) the
cyclic collector runs ~1,250 times, 8 of them full passes over everything imported so far, while a worker
imports torch, transformers, Prefect and the model code: about a fifth of its start-up CPU
(benchmarks/cold_start.py; BENCHMARKS.md, "What a cold process costs"). Collection order changes no number
a unit computes.
"""
import gc

gc.set_threshold(10_000, 10, 10)
