"""The two kinds of failure the orchestration tells apart."""
from __future__ import annotations


class InputError(ValueError):
    """Bad data, a bad value, too little data: failing again cannot help, so it is never retried."""


def is_input_error(exc: BaseException | None) -> bool:
    return isinstance(exc, InputError)
