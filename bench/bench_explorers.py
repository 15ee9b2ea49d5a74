"""Time every notebook explorer's callback at its default settings; print JSON.

Each pebslab/viz module lists its explorers in ``EXPLORERS = {name: (fn,
defaults)}``. Target (issue 4): < 200 ms per callback at defaults, measured
after one warm-up call (numba cache and imports warm), best of 3.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import pebslab.viz as viz  # noqa: E402


def main() -> None:
    out = {}
    for m in sorted(pkgutil.iter_modules(viz.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"pebslab.viz.{m.name}")
        for name, (fn, kwargs) in getattr(mod, "EXPLORERS", {}).items():
            fn(**kwargs)
            plt.close("all")
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                fn(**kwargs)
                best = min(best, time.perf_counter() - t0)
                plt.close("all")
            out[f"{m.name}.{name}"] = {"ms": round(best * 1000, 1), "target_ms": 200,
                                       "ok": best < 0.2}
    print(json.dumps({"explorers": out, "all_ok": all(v["ok"] for v in out.values())},
                     indent=2))


if __name__ == "__main__":
    main()
