"""LViT-layout readers and the converter, on a miniature copy of the layout written here."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from langseg.data import ImageTextMaskDataModule, LViTDataModule, convert_lvit
from langseg.errors import DataError

SPLITS = {"Train": 4, "Val": 2, "Test": 2}


def write_lvit(root: Path, qata: bool = True) -> dict[str, list[tuple[str, str]]]:
    """QaTa-style (mask_ keys) or MosMed-style (shared names) miniature; returns (key, text) per split."""
    rows: dict[str, list[tuple[str, str]]] = {}
    rng = np.random.default_rng(0)
    for split, n in SPLITS.items():
        folder = root / f"{split}_Folder"
        (folder / "img").mkdir(parents=True)
        (folder / "labelcol").mkdir()
        rows[split] = []
        for i in range(n):
            name = f"covid_{split.lower()}_{i}.png"
            key = f"mask_{name}" if qata else name
            Image.fromarray(rng.integers(0, 255, (24, 30), dtype=np.uint8)).save(folder / "img" / name)
            mask = np.zeros((24, 30), np.uint8)
            mask[4:10, 5 + i:12 + i] = 255
            Image.fromarray(mask).save(folder / "labelcol" / key)
            rows[split].append((key, f"Unilateral pulmonary infection, one infected area, lower left lung {i}."))
        pd.DataFrame(rows[split], columns=["Image", "Description"]).to_excel(folder / f"{split}_text.xlsx", index=False)
    return rows


@pytest.mark.parametrize("qata", [True, False])
def test_reads_in_place_with_exact_split_counts(tmp_path, qata):
    rows = write_lvit(tmp_path / "ds", qata)
    dm = LViTDataModule(str(tmp_path / "ds"), image_size=16, num_workers=0, batch_size=2)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.dataset("train")) == 4 and len(dm.dataset("val")) == 2 and len(dm.dataset("test")) == 2
    item = dm.dataset("train")[1]
    assert item["text"] == rows["Train"][1][1] and item["image"].shape == (1, 16, 16)
    assert item["id"] == "covid_train_1" and item["orig_size"].tolist() == [24, 30]


def test_convert_round_trip_keeps_counts_names_and_texts(tmp_path):
    rows = write_lvit(tmp_path / "qata")
    run = subprocess.run([sys.executable, "-m", "langseg", "data", "convert", "--format", "lvit",
                          str(tmp_path / "qata"), str(tmp_path / "generic")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "train 4, val 2, test 2" in run.stdout
    with (tmp_path / "generic" / "train.csv").open(encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [r["text"] for r in table] == [t for _, t in rows["Train"]]
    assert [Path(r["mask"]).name for r in table] == [k for k, _ in rows["Train"]]
    assert [Path(r["image"]).name for r in table] == [k.removeprefix("mask_") for k, _ in rows["Train"]]
    dm = ImageTextMaskDataModule(str(tmp_path / "generic"), image_size=16, num_workers=0)
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        assert len(dm.dataset(split)) == n


def test_convert_with_copy_is_self_contained(tmp_path):
    write_lvit(tmp_path / "qata")
    convert_lvit(tmp_path / "qata", tmp_path / "generic", copy=True)
    with (tmp_path / "generic" / "val.csv").open(encoding="utf-8") as fh:
        first = next(csv.DictReader(fh))
    assert first["image"] == "images/val/covid_val_0.png" and (tmp_path / "generic" / first["mask"]).is_file()


def _edit(root: Path, split: str, frame_edit) -> Path:
    xlsx = root / f"{split}_Folder" / f"{split}_text.xlsx"
    frame = pd.read_excel(xlsx, dtype=object)
    frame_edit(frame)
    frame.to_excel(xlsx, index=False)
    return xlsx


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.rename(columns={"Description": "Text"}, inplace=True), r"missing column\(s\) Description"),
    (lambda f: f.loc.__setitem__((1, "Image"), "mask_ghost.png"), "row 3: image file .*ghost.png' not found"),
    (lambda f: f.loc.__setitem__((2, "Description"), None), "row 4: column 'text' is empty"),
    (lambda f: f.loc.__setitem__((2, "Description"), 42), "row 4: text is 42 \\(int\\); expected a string"),
    (lambda f: f.loc.__setitem__(3, f.loc[0]), "row 5: duplicates row 2"),
])
def test_bad_spreadsheets_name_file_and_row(tmp_path, edit, message):
    write_lvit(tmp_path / "qata")
    xlsx = _edit(tmp_path / "qata", "Train", edit)
    with pytest.raises(DataError, match=message) as info:
        convert_lvit(tmp_path / "qata", tmp_path / "out")
    assert str(xlsx) in str(info.value)
    assert not (tmp_path / "out" / "train.csv").exists() and not (tmp_path / "out" / "val.csv").exists()


def test_mask_of_another_size(tmp_path):
    write_lvit(tmp_path / "qata")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "qata" / "Val_Folder" / "labelcol" / "mask_covid_val_1.png")
    with pytest.raises(DataError, match=r"Val_text.xlsx row 3: mask .* is 10x10 but its image is 30x24"):
        LViTDataModule(str(tmp_path / "qata")).setup("validate")
