"""Atomic file writes: a crash never leaves a half-written file, and re-running overwrites cleanly."""
from __future__ import annotations

import os
import queue
import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from langseg.errors import OutputError


def _file_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask (read once, at import)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()  # mkstemp creates 0600 files: outputs get the mode any other new file would have


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
        os.chmod(tmp, FILE_MODE)
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


def png_bytes(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """A PNG file of uint8 ``pixels``, ``(H, W)`` grey or ``(H, W, 3)`` RGB: every row filtered with "Up" (its
    difference to the row above, modulo 256; PNG specification, section 9) and deflated by ``zlib`` at
    ``compress_level``. Pillow decodes the same pixels as from its own writer, which also tries four other filters
    on every row (docs/benchmarks.md, "Prediction pipeline", measures the difference)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or pixels.ndim == 3 and pixels.shape[2] != 3:
        raise ValueError(f"png_bytes takes uint8 (H, W) or (H, W, 3) pixels, not {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    filtered = np.empty((height, 1 + rows.shape[1]), np.uint8)
    filtered[:, 0] = 2  # the filter type of each row: Up
    filtered[0, 1:] = rows[0]  # the row above the first counts as zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0 if pixels.ndim == 2 else 2, 0, 0, 0)  # 8 bits, grey or RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(filtered, compress_level))
            + chunk(b"IEND", b""))


def write_png(path: str | Path, pixels: np.ndarray, compress_level: int = 1) -> Path:
    """``pixels`` as a PNG file (``png_bytes``) at ``path``, written atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(png_bytes(pixels, compress_level)))


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    """``torch.save`` of ``obj`` through ``atomic_write``, into a Python file object so that a failed write
    (disk full) keeps its OSError and is reported by path."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return atomic_write(path, write)


class BackgroundWriter:
    """Runs file-writing jobs in order on one thread, with at most ``max_pending`` waiting, so that the caller
    (the prediction loop) does not wait for PNG encoding and disk writes.

    The first job that raises stops the writer (later jobs are skipped) and its error is raised on the caller's
    thread by the next ``submit`` or by ``close``, unchanged: an ``OutputError`` still names the file.
    """

    def __init__(self, max_pending: int = 32) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(max_pending)
        self._error: BaseException | None = None  # raised once on the caller's thread
        self._failed = False  # after an error, the jobs still queued are skipped
        self._thread = threading.Thread(target=self._run, name="langseg-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not self._failed:
                try:
                    job()
                except BaseException as err:  # noqa: BLE001 - handed to the caller's thread as it is
                    self._error, self._failed = err, True

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[[], None]) -> None:
        """Queues ``job`` (waits while ``max_pending`` jobs are queued); raises a previous job's error first."""
        self._raise()
        self._jobs.put(job)

    def close(self, raise_error: bool = True) -> None:
        """Waits for every queued job, stops the thread, then raises the first job's error (``raise_error``)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        if raise_error:
            self._raise()
