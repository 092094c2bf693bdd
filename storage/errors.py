"""The two kinds of failure (docs/architecture.md, "How a unit runs").

An *input error* is bad data, a bad value or too little data: the same input fails the same way again, so it
fails at once and is never retried; its message names the file and line or the config field, and says what to
do. Everything else (I/O, the network, a worker that died) is *transient* and retried with backoff.

This module imports nothing of the project, so tasks/, flows/ and infra/ all raise and test the one type.
"""
from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad data, bad value, too little data: failing again cannot help, so never retried.

    `facts` (path, line, field, ...) are recorded in the unit's ledger record (`storage.ledger.UnitError.facts`)
    with `"input_error": True`, so a reader of the ledger tells the two kinds apart without the type's name.
    """

    def __init__(self, message: str, **facts: Any):
        super().__init__(message)
        self.facts: dict[str, Any] = {"input_error": True, **{k: v for k, v in facts.items() if v is not None}}

    def __reduce__(self):  # Ray and Prefect pickle exceptions across processes: keep the facts
        return (_rebuild, (type(self), str(self), self.facts))


def _rebuild(cls: type, message: str, facts: dict[str, Any]) -> InputError:
    err = cls.__new__(cls)
    ValueError.__init__(err, message)
    err.facts = dict(facts)
    return err


def is_input_error(exc: BaseException | None) -> bool:
    """Whether a failure is an input error (never retried): an InputError, or an exception raised from one
    (`raise X from e`, or Ray's `RayTaskError` whose `cause` is one). Everything else counts as transient.

    For Prefect: `task(retries=n, retry_condition_fn=lambda task, run, state: not is_input_error(<exc of state>))`.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        facts = getattr(exc, "facts", None)
        if isinstance(exc, InputError) or (isinstance(facts, dict) and facts.get("input_error") is True):
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__
    return False
