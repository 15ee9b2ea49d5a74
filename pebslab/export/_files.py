"""Write files all-or-nothing: a temporary file in the target folder, then rename.

pebslab only. A failed export (bad input found late, a full disk, a folder
that cannot be written) leaves no half-written file behind: every output is
first written to a hidden temporary file beside its final name, and only
when all of them are complete are they renamed into place (``os.replace``
is atomic within one file system).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def as_path(name: str, value) -> Path:
    """Return ``value`` as a Path if it is a str or os.PathLike; else TypeError naming ``name``."""
    if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
        p = Path(value)
        if str(p) in ("", "."):
            raise ValueError(f"{name} must name a file; got {value!r}")
        return p
    raise TypeError(f"{name} must be a str or os.PathLike file name; got {type(value).__name__} "
                    f"{value!r}")


def check_writable(name: str, path: Path) -> None:
    """Raise ValueError naming ``name`` unless ``path``'s folder exists and is writable."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{name} {str(path)!r} cannot be written: folder {str(folder)!r} does not "
                         "exist")
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} cannot be written: it is a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(path)!r} cannot be written: folder {str(folder)!r} is not "
                         "writable")


def write_all(files: dict[Path, bytes]) -> None:
    """Write every (path -> bytes) pair, all or nothing.

    Each file goes to a temporary name in its own folder first; only when
    every one is written and flushed are they renamed into place. On any
    error the temporaries are removed and the error propagates.
    """
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                       dir=str(path.parent) if str(path.parent) else ".")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
