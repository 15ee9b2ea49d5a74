"""Argument checks shared by every public function.

pebslab only. Messages name the argument, the value and what is allowed,
e.g. ``frames must be in 64..4194304; got 3``.
"""

from __future__ import annotations

import numpy as np


def is_int(x) -> bool:
    """True for Python and numpy integers, False for bools."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _fmt(v: int, as_hex: bool) -> str:
    return f"{v:#x}" if as_hex and v >= 0 else str(v)


def check_int(name: str, value, lo: int | None = None, hi: int | None = None, *,
              as_hex: bool = False) -> int:
    """Return ``int(value)`` if it is an integer in [lo, hi]; else TypeError/ValueError."""
    span = f"{'-inf' if lo is None else _fmt(lo, as_hex)}..{'inf' if hi is None else _fmt(hi, as_hex)}"
    if not is_int(value):
        raise TypeError(f"{name} must be an int in {span}; got {type(value).__name__} {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be in {span}; got {_fmt(v, as_hex)}")
    return v


def check_choice(name: str, value, allowed):
    """Return ``value`` if it is one of ``allowed``; else ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value
