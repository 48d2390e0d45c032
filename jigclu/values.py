"""A value as JSON holds it: tensors and numpy scalars as Python numbers, NaN and infinities as null.

Metrics lines, Tune reports and the sweep report all write through :func:`jsonable`; this module
imports nothing heavy, so the report can use it without loading torch."""

from __future__ import annotations

import math
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` as JSON holds it (a one-element tensor or numpy scalar as its number, NaN/inf as None)."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["jsonable"]
