"""Content fingerprints: a unit re-runs when the inputs that shape its output change, like a build system."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel


def _canonical(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return _canonical(obj.model_dump(mode="json"))
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        return repr(obj)  # 0.1 and 0.1000000001 must not collide through json's rounding
    return obj


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (pydantic models included); order of dict keys does not matter."""
    blob = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]
