"""Atomic file writes: a crash never leaves a half-written file, and re-running overwrites cleanly."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from langseg.errors import OutputError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``; an OSError
    (read-only folder, full disk) becomes an OutputError naming ``path``, and no partial file is left."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
        write(Path(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError around it
        cause = err if isinstance(err, OSError) else err.__context__
        if not isinstance(cause, OSError):
            raise
        raise OutputError(f"{path}: cannot write ({cause.strerror or cause}); nothing was written") from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    """``torch.save`` of ``obj`` through ``atomic_write``, into a Python file object so that a failed write
    (disk full) keeps its OSError and is reported by path."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return atomic_write(path, write)
