"""QaTa-COV19, MosMedData+ and MoNuSeg in LViT's layout: read in place, or convert to the generic CSV format.

Layout: ``<root>/{Train,Val,Test}_Folder/{img/, labelcol/, <Split>_text.xlsx}``; the spreadsheet has
columns ``Image | Description``. A key is a bare file name that names the mask ``labelcol/<key>``. The
image is ``img/<key>`` without a leading ``mask_`` (QaTa: ``mask_<x>.png`` -> ``img/<x>.png``; MosMed:
the same name). When that file is absent, the one image of the same stem is used, as LViT's loader pairs
MoNuSeg's ``img/<x>.tif`` with ``labelcol/<x>.png``. The splits are exactly the spreadsheets' rows.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from langseg.data.datamodules import SegmentationDataModule, Split
from langseg.data.datasets import ImageTextMaskDataset, validate_records
from langseg.data.transforms import Intensity, Resize
from langseg.errors import DataError
from langseg.files import atomic_write, atomic_write_text

LVIT_SPLITS = {"train": "Train", "val": "Val", "test": "Test"}
LVIT_COLUMNS = ("Image", "Description")


def lvit_spreadsheet(root: Path, split: str) -> Path:
    name = LVIT_SPLITS[split]
    return root / f"{name}_Folder" / f"{name}_text.xlsx"


def read_lvit_records(root: str | Path, split: str) -> list[dict[str, Any]]:
    """Unchecked records (see ``validate_records``) of one split of an LViT-layout dataset."""
    import pandas as pd

    root = Path(root)
    xlsx = lvit_spreadsheet(root, split)
    if not xlsx.is_file():
        raise DataError(f"{xlsx}: annotation spreadsheet not found; expected LViT's layout "
                        f"<root>/{{Train,Val,Test}}_Folder/{{img/, labelcol/, <Split>_text.xlsx}}")
    try:
        table = pd.read_excel(xlsx, dtype=object)
    except Exception as err:  # openpyxl raises many types for a damaged file
        raise DataError(f"{xlsx}: cannot read the spreadsheet ({err})") from err
    missing = [c for c in LVIT_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{xlsx}: missing column(s) {', '.join(missing)}; found {list(table.columns)}, "
                        f"expected Image, Description")
    folder = xlsx.parent
    images_by_stem = _files_by_stem(folder / "img")
    records = []
    for offset, (key, text) in enumerate(zip(table["Image"], table["Description"])):
        line = offset + 2  # header is row 1
        where = f"{xlsx} row {line}"
        if not isinstance(key, str) or not key.strip():
            raise DataError(f"{where}: column 'Image' is {key!r}; expected a file name such as mask_covid_1.png")
        key = key.strip()
        name = PurePosixPath(key.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts:
            raise DataError(f"{where}: key {key!r} leaves the dataset folder; expected a file name inside "
                            f"{folder / 'labelcol'}, such as mask_covid_1.png")
        image = folder / "img" / (key[len("mask_"):] if key.startswith("mask_") else key)
        if not image.is_file():
            image = _same_stem(image, images_by_stem, where)
        records.append({"image": image, "mask": folder / "labelcol" / key, "text": text,
                        "where": where, "line": line, "key": (key,)})
    return records


def _files_by_stem(folder: Path) -> dict[Path, list[Path]]:
    """The files under ``folder`` grouped by path without suffix (``a/b.tif`` -> ``a/b``); empty if no folder."""
    groups: dict[Path, list[Path]] = defaultdict(list)
    if folder.is_dir():
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                groups[file.with_suffix("")].append(file)
    return groups


def _same_stem(image: Path, images_by_stem: dict[Path, list[Path]], where: str) -> Path:
    """The one image whose name differs from ``image`` only in its suffix (MoNuSeg: ``.tif`` for ``.png``);
    ``image`` itself when there is none (the check of the files then names it)."""
    found = images_by_stem.get(image.with_suffix(""), [])
    if len(found) > 1:
        raise DataError(f"{where}: image '{image}' not found and several files share its stem "
                        f"({', '.join(f.name for f in found)}); expected one image per mask")
    return found[0] if found else image


class LViTDataModule(SegmentationDataModule):
    """QaTa-COV19 / MosMedData+ / MoNuSeg read in place from LViT's layout (``root`` holds ``Train_Folder`` ...)."""

    def __init__(self, root: str, image_size: int = 224, in_channels: int = 1, batch_size: int = 16,
                 num_workers: int = 2, mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.25,),
                 swap_seed: int = 0, predict_split: Split = "test", resize: Resize = "bilinear",
                 intensity: Intensity = "unit", zoom: tuple[float, float] | None = None, zoom_p: float = 0.1) -> None:
        super().__init__(image_size, in_channels, batch_size, num_workers, swap_seed, predict_split)
        self.save_hyperparameters()
        self.pipeline_options(resize, intensity, zoom, zoom_p)
        self.root = Path(root).expanduser()
        self.mean, self.std = mean, std

    def build_dataset(self, split: Split) -> ImageTextMaskDataset:
        """The split's rows, with the input pipeline of ``ImageTextMaskDataModule`` (same options)."""
        return ImageTextMaskDataset(image_size=self.image_size, in_channels=self.in_channels, mean=self.mean,
                                    std=self.std, records=read_lvit_records(self.root, split),
                                    source=lvit_spreadsheet(self.root, split), resize=self.resize,
                                    intensity=self.intensity,
                                    augmentation=self.train_augmentation() if split == "train" else None)


def convert_lvit(src: str | Path, dst: str | Path, copy: bool = False) -> dict[str, int]:
    """Write ``dst/{train,val,test}.csv`` (generic format) for an LViT-layout ``src``; returns rows per split.

    Every split is read and checked before anything is written, and each CSV is written to a temporary
    file and renamed, so a bad row leaves ``dst`` untouched. With ``copy`` the images and masks are
    copied under ``dst/{images,masks}/<split>/``; otherwise the CSVs point at ``src`` by relative paths.
    """
    src, dst = Path(src), Path(dst)
    splits = {s: validate_records(read_lvit_records(src, s), lvit_spreadsheet(src, s)) for s in LVIT_SPLITS}
    dst.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        lines = []
        for row in rows:
            image, mask = row["image"], row["mask"]
            if copy:
                image = _copy(image, dst / "images" / split / image.name)
                mask = _copy(mask, dst / "masks" / split / mask.name)
            lines.append([os.path.relpath(image, dst), os.path.relpath(mask, dst), row["text"]])
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(["image", "mask", "text"])
        writer.writerows(lines)
        atomic_write_text(dst / f"{split}.csv", buffer.getvalue())
    return {split: len(rows) for split, rows in splits.items()}


def _copy(file: Path, target: Path) -> Path:
    return atomic_write(target, lambda tmp: shutil.copyfile(file, tmp))
