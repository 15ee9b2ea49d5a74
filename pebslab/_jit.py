"""numba's ``njit`` when numba imports, else a no-op stand-in.

pebslab only. Every hot loop is written once, as numba-compatible Python:
``f`` runs compiled and ``f.py_func`` runs the same code as plain Python (the
reference the tests compare against). Without numba, or with
``NUMBA_DISABLE_JIT=1``, both names run the Python code.
"""

from __future__ import annotations

try:  # pragma: no cover - exercised by the import itself
    from numba import njit as _numba_njit
    HAVE_NUMBA = True
except Exception:  # numba missing or broken: fall back to Python
    _numba_njit = None
    HAVE_NUMBA = False


def njit(*args, **kwargs):
    """Decorator: ``numba.njit(cache=True)`` or, without numba, the function itself."""
    if _numba_njit is not None:
        kwargs.setdefault("cache", True)
        return _numba_njit(*args, **kwargs)

    def wrap(f):
        f.py_func = f
        return f

    if args and callable(args[0]) and len(args) == 1 and not kwargs:
        return wrap(args[0])
    return wrap
