import os
import stat
import threading
import time

import pytest

from langseg.errors import OutputError
from langseg.files import BackgroundWriter, atomic_write_text


def test_background_writer_runs_jobs_in_order_off_the_calling_thread(tmp_path):
    writer = BackgroundWriter(max_pending=2)
    threads, order = set(), []

    def job(k: int) -> None:
        threads.add(threading.current_thread().name)
        order.append(k)
        atomic_write_text(tmp_path / f"{k}.txt", str(k))

    for k in range(10):
        writer.submit(lambda k=k: job(k))
    writer.close()
    assert order == list(range(10)) and threads == {"langseg-writer"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{k}.txt" for k in range(10))


def test_background_writer_raises_the_first_error_naming_the_file_and_skips_the_rest(tmp_path):
    (tmp_path / "blocked").write_text("a file where a folder goes")
    writer = BackgroundWriter()
    writer.submit(lambda: atomic_write_text(tmp_path / "blocked" / "a.txt", "a"))
    writer.submit(lambda: atomic_write_text(tmp_path / "b.txt", "b"))
    with pytest.raises(OutputError, match=r"blocked/a.txt: cannot write"):
        writer.close()
    assert not (tmp_path / "b.txt").exists()


def test_background_writer_error_surfaces_at_the_next_submit_once():
    writer = BackgroundWriter()

    def fail() -> None:
        raise OutputError("x.png: cannot write")

    writer.submit(fail)
    deadline = time.monotonic() + 10
    while not writer._failed and time.monotonic() < deadline:  # the writer thread takes the job
        time.sleep(0.01)
    with pytest.raises(OutputError, match="x.png"):
        writer.submit(lambda: None)
    writer.close()  # raised once: the caller has seen it


def test_written_files_get_the_mode_of_any_new_file(tmp_path):
    """mkstemp's 0600 would hide predictions and checkpoints from a shared group; the umask decides instead."""
    umask = os.umask(0)
    os.umask(umask)
    written = atomic_write_text(tmp_path / "report.json", "{}")
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_png_bytes_decode_to_the_same_pixels_in_grey_and_rgb():
    import io

    import numpy as np
    from PIL import Image

    from langseg.files import png_bytes

    rng = np.random.default_rng(0)
    smooth = np.add.outer(np.arange(50), np.arange(70)).astype(np.uint8)  # rows that differ: "Up" wraps around
    for pixels in (rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), smooth, smooth[::-1, :, None].repeat(3, 2),
                   np.full((1, 1), 255, np.uint8), rng.integers(0, 256, (64, 1), dtype=np.uint8)):
        for level in (0, 1, 9):
            with Image.open(io.BytesIO(png_bytes(pixels, level))) as image:
                assert image.mode == ("L" if pixels.ndim == 2 else "RGB")
                assert np.array_equal(np.asarray(image), pixels)
    assert len(png_bytes(smooth, 9)) < len(png_bytes(smooth, 0))
    with pytest.raises(ValueError, match="uint8 .H, W. or .H, W, 3. pixels, not float32"):
        png_bytes(smooth.astype(np.float32))
