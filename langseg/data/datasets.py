"""Datasets yielding ``{"image", "mask", "text", "id", "orig_size"}`` samples (and ``"swap_text"`` when wrapped)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from langseg.data.synthetic import make_referring_sample
from langseg.errors import DataError

REQUIRED_COLUMNS = ("image", "mask", "text")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "predict": 3}


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel ``(x - mean) / std`` of a ``(C, H, W)`` image in [0, 1]; one value applies to all channels."""
    m = torch.as_tensor(mean, dtype=image.dtype).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype).reshape(-1, 1, 1)
    return (image - m) / s


def derangement(n: int, seed: int) -> list[int]:
    """A fixed-seed permutation of ``range(n)`` with no fixed point (Sattolo's single cycle); identity if n < 2."""
    order = list(range(n))
    rng = np.random.default_rng(seed)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(i))
        order[i], order[j] = order[j], order[i]
    return order


class SyntheticReferringDataset(Dataset):
    """Deterministic procedural referring-lesion samples (see ``langseg.data.synthetic``)."""

    def __init__(self, num_samples: int, image_size: int = 64, in_channels: int = 1, seed: int = 0,
                 split: str = "train", mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.25,)) -> None:
        self.num_samples = num_samples
        self.image_size = image_size
        self.in_channels = in_channels
        self.seed = seed
        self.split_id = SPLIT_IDS[split]
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return self.num_samples

    def _sample(self, index: int):
        rng = np.random.default_rng([self.seed, self.split_id, index])
        return make_referring_sample(self.image_size, rng)

    def text_of(self, index: int) -> str:
        return self._sample(index).text

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self._sample(index)
        image = torch.from_numpy(s.image).unsqueeze(0).expand(self.in_channels, -1, -1).contiguous()
        return {
            "image": normalize(image, self.mean, self.std),
            "mask": torch.from_numpy(s.mask).float().unsqueeze(0),
            "text": s.text,
            "id": f"synthetic_{self.split_id}_{index:05d}",
            "orig_size": torch.tensor([self.image_size, self.image_size]),
        }


def _read_array(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode in ("RGBA", "LA", "P", "PA"):
                img = img.convert("RGB")
            return np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot read the image ({err}); expected a PNG or JPEG file") from err


def _to_unit(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32, np.int16):
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    raise DataError(f"{path}: unsupported pixel type {arr.dtype}; expected 8- or 16-bit images")


class ImageTextMaskDataset(Dataset):
    """Rows of a generic-format CSV (columns ``image,mask,text``, paths relative to the CSV).

    Every row is checked when the dataset is built (columns, empty text, duplicate rows, files present,
    image and mask of the same size); mask values are checked as each mask is read.
    """

    def __init__(self, csv_path: str | Path, image_size: int = 224, in_channels: int = 1,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.25,)) -> None:
        self.csv_path = Path(csv_path)
        self.image_size = image_size
        self.in_channels = in_channels
        self.mean, self.std = mean, std
        self.rows = self._read_rows()

    def _read_rows(self) -> list[dict[str, Any]]:
        path = self.csv_path
        if not path.is_file():
            raise DataError(f"{path}: split file not found; expected a CSV with columns image,mask,text")
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                columns = reader.fieldnames or []
                missing = [c for c in REQUIRED_COLUMNS if c not in columns]
                if missing:
                    raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {columns}, "
                                    f"expected image,mask,text")
                raw = list(reader)
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})") from err
        if not raw:
            raise DataError(f"{path}: no rows; expected at least one image,mask,text row")
        rows, seen = [], {}
        for line, rec in enumerate(raw, start=2):
            where = f"{path} row {line}"
            text = (rec.get("text") or "").strip()
            if not text:
                raise DataError(f"{where}: column 'text' is empty; expected the referring text")
            key = (rec["image"], rec["mask"], text)
            if key in seen:
                raise DataError(f"{where}: duplicates row {seen[key]} (same image, mask and text)")
            seen[key] = line
            image, mask = path.parent / rec["image"], path.parent / rec["mask"]
            for col, file in (("image", image), ("mask", mask)):
                if not rec[col] or not file.is_file():
                    raise DataError(f"{where}: {col} file '{file}' not found")
            isize, msize = self._size(image), self._size(mask)
            if isize != msize:
                raise DataError(f"{where}: mask '{mask}' is {msize[0]}x{msize[1]} but its image is "
                                f"{isize[0]}x{isize[1]}; expected the same size")
            rows.append({"image": image, "mask": mask, "text": text, "size": isize, "line": line})
        return rows

    @staticmethod
    def _size(file: Path) -> tuple[int, int]:
        try:
            with Image.open(file) as img:
                return img.size
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{file}: cannot read the image ({err}); expected a PNG or JPEG file") from err

    def __len__(self) -> int:
        return len(self.rows)

    def text_of(self, index: int) -> str:
        return self.rows[index]["text"]

    def load_image(self, file: Path) -> Tensor:
        """``(C, S, S)`` image in [0, 1], converted to ``in_channels`` and resized."""
        arr = _to_unit(_read_array(file), file)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape[-1] != self.in_channels:
            arr = arr.mean(-1, keepdims=True) if self.in_channels == 1 else np.repeat(arr[..., :1], self.in_channels, -1)
        img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0)
        img = torch.nn.functional.interpolate(img, size=(self.image_size,) * 2, mode="bilinear",
                                              align_corners=False, antialias=True)
        return img[0].clamp(0, 1)

    def load_mask(self, file: Path) -> Tensor:
        """``(1, S, S)`` binary mask: 0 background, the one other level foreground, resized (nearest)."""
        arr = _read_array(file)
        if arr.ndim == 3:
            arr = arr.max(-1)
        levels = np.unique(arr)
        if len(levels) > 2 or (len(levels) == 2 and levels[0] != 0):
            shown = ", ".join(str(v) for v in levels[:6]) + (", ..." if len(levels) > 6 else "")
            raise DataError(f"{file}: mask has values {{{shown}}}; expected two levels, 0 for background "
                            f"and one value (1 or 255) for the lesion")
        mask = torch.from_numpy((arr > 0).astype(np.float32))[None, None]
        mask = torch.nn.functional.interpolate(mask, size=(self.image_size,) * 2, mode="nearest")
        return mask[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        return {
            "image": normalize(self.load_image(row["image"]), self.mean, self.std),
            "mask": self.load_mask(row["mask"]),
            "text": row["text"],
            "id": row["image"].stem,
            "orig_size": torch.tensor([row["size"][1], row["size"][0]]),
        }


class SwappedTextDataset(Dataset):
    """Adds ``swap_text``: the text of another sample, by a fixed-seed derangement of the dataset."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.partner = derangement(len(dataset), seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        item["swap_text"] = self.dataset.text_of(self.partner[index])
        return item
