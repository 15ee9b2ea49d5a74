"""Execute notebooks in place, the way they are committed.

Usage: python tools/nbexec.py notebooks/NN_name.ipynb [...]

Runs every cell top to bottom in a fresh kernel (the current environment's
``python3``) from the notebook's folder, keeps the outputs, numbers cells
1..n, and strips saved widget state (the book build embeds fresh state;
nbval ignores widget views). Fails on the first error.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            store_widget_state=True)
    client.execute()
    nb.metadata.pop("widgets", None)
    n = 0
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            n += 1
            cell.execution_count = n
            for out in cell.outputs:
                if "execution_count" in out:
                    out["execution_count"] = n
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, path)
    return time.perf_counter() - t0


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        dt = execute(Path(arg))
        print(f"{arg}: executed in {dt:.1f} s")
