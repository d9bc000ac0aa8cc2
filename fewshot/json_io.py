"""JSON that every reader accepts: Python's ``json`` writes ``NaN`` and ``Infinity`` (not JSON) for non-finite
floats; here they become ``null``. Every JSON file and JSON output of the framework goes through :func:`dumps`."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, in nested dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return finite(value.item())
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` of :func:`finite` ``(value)``, refusing anything that still is not JSON."""
    return json.dumps(finite(value), allow_nan=False, **options)
