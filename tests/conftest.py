"""Shared fixtures: a generic-format data folder written by the tests themselves, a tiny batch of the
embedded data, and the model registry restored after every test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import langseg.models  # noqa: F401 - registers the built-in models before _restore_registry saves them
from langseg import registry
from langseg.data import SyntheticReferringDataModule
from langseg.data.synthetic import write_generic_split

REPO = Path(__file__).resolve().parent.parent


def write_generic_folder(root: Path, sizes: dict[str, int] | None = None, image_size: int = 40) -> Path:
    """Write ``root/{images,masks}/`` PNGs and ``{train,val,test}.csv`` from synthetic samples."""
    rng = np.random.default_rng(0)
    for split, n in (sizes or {"train": 8, "val": 4, "test": 4}).items():
        write_generic_split(root, split, n, image_size, rng)
    return root


def synthetic_batch(n: int = 4, size: int = 32, texts: list[str] | None = None) -> dict:
    """``n`` training samples of the embedded data as one batch."""
    dm = SyntheticReferringDataModule(num_train=n, image_size=size, num_workers=0)
    dm.setup("fit")
    items = [dm.dataset("train")[i] for i in range(n)]
    return {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
            "text": texts or [i["text"] for i in items]}


@pytest.fixture
def generic_folder(tmp_path: Path) -> Path:
    return write_generic_folder(tmp_path / "data")


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread avoids oversubscribing a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_registry():
    """Models a test registers (e.g. docs/extending.md's example) do not leak into later tests."""
    saved = dict(registry._MODELS)
    yield
    registry._MODELS.clear()
    registry._MODELS.update(saved)
