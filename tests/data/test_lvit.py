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


def _names(dataset: str, split: str, i: int) -> tuple[str, str, str]:
    """(spreadsheet key, image file, mask file) in each dataset's naming as LViT ships it."""
    if dataset == "qata":  # the key is the mask's name; the image drops its mask_ prefix
        return f"mask_covid_{split.lower()}_{i}.png", f"covid_{split.lower()}_{i}.png", f"mask_covid_{split.lower()}_{i}.png"
    if dataset == "mosmed":  # image and mask share one name
        name = f"study_{split.lower()}_{i}.png"
        return name, name, name
    # MoNuSeg: TCGA slide names; the key and the mask say .png, the image is a .tif
    stem = f"TCGA-{split[:2].upper()}-A1{i}K-01Z-00-DX1"
    return f"{stem}.png", f"{stem}.tif", f"{stem}.png"


def write_lvit(root: Path, dataset: str = "qata") -> dict[str, list[tuple[str, str]]]:
    """A miniature of ``dataset`` (qata, mosmed, monuseg) in LViT's layout; returns (key, text) per split."""
    rows: dict[str, list[tuple[str, str]]] = {}
    rng = np.random.default_rng(0)
    for split, n in SPLITS.items():
        folder = root / f"{split}_Folder"
        (folder / "img").mkdir(parents=True)
        (folder / "labelcol").mkdir()
        rows[split] = []
        for i in range(n):
            key, image, mask_name = _names(dataset, split, i)
            shape = (24, 30, 3) if dataset == "monuseg" else (24, 30)  # MoNuSeg: RGB H&E tiles
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / "img" / image)
            mask = np.zeros((24, 30), np.uint8)
            mask[4:10, 5 + i:12 + i] = 255
            Image.fromarray(mask).save(folder / "labelcol" / mask_name)
            rows[split].append((key, f"Unilateral pulmonary infection, one infected area, lower left lung {i}."))
        pd.DataFrame(rows[split], columns=["Image", "Description"]).to_excel(folder / f"{split}_text.xlsx", index=False)
    return rows


@pytest.mark.parametrize("dataset", ["qata", "mosmed", "monuseg"])
def test_reads_in_place_with_exact_split_counts(tmp_path, dataset):
    rows = write_lvit(tmp_path / "ds", dataset)
    dm = LViTDataModule(str(tmp_path / "ds"), image_size=16, num_workers=0, batch_size=2)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.dataset("train")) == 4 and len(dm.dataset("val")) == 2 and len(dm.dataset("test")) == 2
    item = dm.dataset("train")[1]
    key, image, _ = _names(dataset, "Train", 1)
    assert item["text"] == rows["Train"][1][1] and item["image"].shape == (1, 16, 16)
    assert Path(item["image_path"]).name == image and item["id"] == Path(image).stem
    assert item["orig_size"].tolist() == [24, 30] and item["mask"].sum() > 0


@pytest.mark.parametrize("dataset", ["qata", "mosmed", "monuseg"])
def test_convert_pairs_each_datasets_images_and_masks(tmp_path, dataset):
    rows = write_lvit(tmp_path / dataset, dataset)
    assert convert_lvit(tmp_path / dataset, tmp_path / "generic") == {"train": 4, "val": 2, "test": 2}
    for split in ("Train", "Val", "Test"):
        with (tmp_path / "generic" / f"{split.lower()}.csv").open(encoding="utf-8") as fh:
            table = list(csv.DictReader(fh))
        expected = [_names(dataset, split, i) for i in range(SPLITS[split])]
        assert [(Path(r["image"]).name, Path(r["mask"]).name) for r in table] == [(im, m) for _, im, m in expected]
        assert [r["text"] for r in table] == [t for _, t in rows[split]]
    dm = ImageTextMaskDataModule(str(tmp_path / "generic"), image_size=16, in_channels=3, num_workers=0)
    assert dm.dataset("test")[0]["image"].shape == (3, 16, 16)


def test_two_images_of_one_stem_are_ambiguous(tmp_path):
    write_lvit(tmp_path / "monuseg", "monuseg")
    key, image, _ = _names("monuseg", "Val", 1)
    Image.new("RGB", (30, 24)).save(tmp_path / "monuseg" / "Val_Folder" / "img" / image.replace(".tif", ".jpg"))
    with pytest.raises(DataError, match=r"Val_text.xlsx row 3: image .* several files share its stem \(.*\.jpg, .*\.tif\)"):
        convert_lvit(tmp_path / "monuseg", tmp_path / "out")


@pytest.mark.parametrize("key", ["../../Val_Folder/labelcol/mask_covid_val_0.png", "/etc/mask_covid_val_0.png",
                                 "..\\Val_Folder\\labelcol\\mask_covid_val_0.png"])
def test_a_key_that_leaves_the_dataset_folder_is_refused(tmp_path, key):
    write_lvit(tmp_path / "qata")
    xlsx = _edit(tmp_path / "qata", "Train", lambda f: f.loc.__setitem__((2, "Image"), key))
    with pytest.raises(DataError) as info:
        LViTDataModule(str(tmp_path / "qata")).setup("fit")
    message = str(info.value)
    assert message.startswith(f"{xlsx} row 4: key {key!r} leaves the dataset folder") and "\n" not in message


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
