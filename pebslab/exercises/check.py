"""All exercise checkers in one namespace: ``check.exNN_name(your_function)``.

pebslab only. Collects every ``exNN_*`` function of the
``pebslab.exercises.nbNN`` modules.
"""

from __future__ import annotations

import importlib
import pkgutil

from .. import exercises as _pkg

_names = []
for _m in sorted(pkgutil.iter_modules(_pkg.__path__), key=lambda m: m.name):
    if _m.name.startswith("nb"):
        _mod = importlib.import_module(f"{_pkg.__name__}.{_m.name}")
        for _k in dir(_mod):
            if _k.startswith("ex") and callable(getattr(_mod, _k)):
                globals()[_k] = getattr(_mod, _k)
                _names.append(_k)

__all__ = sorted(_names)
