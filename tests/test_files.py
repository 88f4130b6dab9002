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
