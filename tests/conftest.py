"""Shared fixtures: a generic-format data folder written by the tests themselves."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from langseg.data.synthetic import make_referring_sample


def write_generic_folder(root: Path, sizes: dict[str, int] | None = None, image_size: int = 40) -> Path:
    """Write ``root/{images,masks}/`` PNGs and ``{train,val,test}.csv`` from synthetic samples."""
    sizes = sizes or {"train": 8, "val": 4, "test": 4}
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in sizes.items():
        with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "mask", "text"])
            for i in range(n):
                s = make_referring_sample(image_size, rng)
                name = f"{split}_{i}.png"
                Image.fromarray((s.image * 255).astype(np.uint8)).save(root / "images" / name)
                Image.fromarray(s.mask * 255).save(root / "masks" / name)
                writer.writerow([f"images/{name}", f"masks/{name}", s.text])
    return root


@pytest.fixture
def generic_folder(tmp_path: Path) -> Path:
    return write_generic_folder(tmp_path / "data")
