"""The pieces behind the CLI's guarantees: claimed run folders and atomic checkpoints."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from langseg.errors import OutputError
from langseg.lightning_cli import AtomicCheckpointIO, RunLogger


def test_two_runs_started_at_once_get_different_folders(tmp_path, monkeypatch):
    # both runs list the folder before either creates its version: both would pick version_0
    monkeypatch.setattr(CSVLogger, "_get_next_version", lambda self: 0)
    first, second = RunLogger(tmp_path, name=""), RunLogger(tmp_path, name="")
    assert (first.version, second.version) == (0, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["version_0", "version_1"]


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def full_disk(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)  # atomic_torch_save looks torch.save up at call time
    with pytest.raises(OutputError, match=r"last.ckpt: cannot write \(No space left on device\); nothing was written"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
