"""Datasets yielding ``{"image", "mask", "text", "id", "orig_size", "columns"}`` samples (and, wrapped for
the test split, ``"swap_text"``, ``"alt_texts"`` and ``"categories"``)."""
from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from langseg.data.synthetic import make_referring_sample
from langseg.data.transforms import (INTENSITY_MODES, RESIZE_MODES, Intensity, Resize, normalize, normalize_intensity,
                                     resize_image)
from langseg.errors import ConfigError, DataError

log = logging.getLogger("langseg")
REQUIRED_COLUMNS = ("image", "mask", "text")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "predict": 3}


def derangement(n: int, seed: int) -> list[int]:
    """A fixed-seed permutation of ``range(n)`` with no fixed point (Sattolo's single cycle); identity if n < 2."""
    order = list(range(n))
    rng = np.random.default_rng(seed)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(i))
        order[i], order[j] = order[j], order[i]
    return order


class SyntheticReferringDataset(Dataset):
    """Deterministic procedural referring-lesion samples (see ``langseg.data.synthetic``), with the extra
    columns ``category`` (zone, side, all, size) and ``text_short`` (the target's key words); ``wording``: varied
    phrasings or the canonical one (``make_referring_sample``)."""

    columns = ("category", "text_short")

    def __init__(self, num_samples: int, image_size: int = 64, in_channels: int = 1, seed: int = 0,
                 split: str = "train", mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.25,),
                 wording: Literal["varied", "canonical"] = "varied") -> None:
        self.num_samples = num_samples
        self.wording = wording
        self.image_size = image_size
        self.in_channels = in_channels
        self.seed = seed
        self.split_id = SPLIT_IDS[split]
        self.mean, self.std = mean, std
        self._memo: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.num_samples

    def _sample(self, index: int):
        """The sample at ``index``, generated once per process and then kept (about 8 KB at 64x64)."""
        if index not in self._memo:
            rng = np.random.default_rng([self.seed, self.split_id, index])
            self._memo[index] = make_referring_sample(self.image_size, rng, self.wording)
        return self._memo[index]

    def text_of(self, index: int) -> str:
        return self._sample(index).text

    def columns_of(self, index: int) -> dict[str, str]:
        s = self._sample(index)
        return {"category": s.category, "text_short": s.text_short}

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self._sample(index)
        image = torch.from_numpy(s.image).unsqueeze(0).expand(self.in_channels, -1, -1).contiguous()
        return {
            "image": normalize(image, self.mean, self.std),
            "mask": torch.from_numpy(s.mask).float().unsqueeze(0),
            "text": s.text,
            "id": f"synthetic_{self.split_id}_{index:05d}",
            "image_path": "",
            "orig_size": torch.tensor([self.image_size, self.image_size]),
            "columns": self.columns_of(index),
        }


ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
MISSING_VALUE_MARKERS = ("nan", "none", "null")  # what a spreadsheet or pandas writes for an empty cell
GRAY_MODES = ("1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I")  # read as they are (bool, 8- or 16-bit gray)
COLOR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")  # converted to RGB


def _pixels(img: Image.Image, path: Path | str) -> np.ndarray:
    mode = img.mode
    if mode in ("LA", "La"):
        img = img.convert("L")
    elif mode in COLOR_MODES and mode != "RGB":
        img = img.convert("RGB")
    elif mode not in GRAY_MODES + ("RGB",):
        raise DataError(f"{path}: image mode {mode} is not supported; expected gray (8/16-bit), RGB, "
                        f"RGBA, palette or CMYK")
    arr = np.asarray(img)
    if mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(f"{path}: 32-bit image with values outside 0..65535; expected 8- or 16-bit images")
    return arr.astype(arr.dtype.newbyteorder("=")) if arr.dtype.byteorder not in ("=", "|") else arr


def _read_array(path: Path) -> np.ndarray:
    """The pixels of an image file: gray modes as they are (16-bit in native byte order), colour modes
    converted to RGB through PIL (so CMYK, palette and YCbCr images keep their appearance), ``LA`` to gray;
    a float or other mode is refused by name."""
    try:
        with Image.open(path) as img:
            return _pixels(img, path)
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: image too large ({err}); expected an image below PIL's "
                        f"{Image.MAX_IMAGE_PIXELS} pixel limit") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot read the image ({err}); expected a PNG, JPEG or TIFF file") from err


def _to_unit(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32, np.int16):
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    raise DataError(f"{path}: unsupported pixel type {arr.dtype}; expected 8- or 16-bit images")


def image_array(image: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """Pixels of a file path, a PIL image or an array (H, W) / (H, W, C), read as the datasets read files."""
    if isinstance(image, (str, Path)):
        return _read_array(Path(image))
    if isinstance(image, Image.Image):
        return _pixels(image, "the image")
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise DataError(f"an image array of shape {arr.shape}; expected (H, W) or (H, W, 1|3|4)")
    return arr[..., :3] if arr.ndim == 3 and arr.shape[-1] == 4 else arr


def prepare_image(arr: np.ndarray, image_size: int, in_channels: int, where: Path | str = "the image",
                  resize: Resize = "bilinear") -> Tensor:
    """``(C, S, S)`` image from pixels: scaled by bit depth to [0, 1], converted to ``in_channels`` (gray is
    the channel mean; one channel is repeated) and resized to ``image_size`` (``resize_image``)."""
    if arr.dtype.kind == "f":
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise DataError(f"{where}: float pixels outside [0, 1]; expected 8/16-bit or [0, 1] floats")
        arr = arr.astype(np.float32)
    else:
        arr = _to_unit(arr, Path(str(where)))
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] != in_channels:
        arr = arr.mean(-1, keepdims=True) if in_channels == 1 else np.repeat(arr.mean(-1, keepdims=True), in_channels, -1)
    return resize_image(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1), image_size, resize)


def model_input(pixels: np.ndarray, preprocessing: Mapping[str, Any]) -> Tensor:
    """``(C, S, S)`` model input from pixels, prepared as a checkpoint's ``preprocessing`` record says (the
    datamodule's ``preprocessing()``; records without ``resize``/``intensity`` are bilinear and ``unit``)."""
    resize, intensity = preprocessing.get("resize", "bilinear"), preprocessing.get("intensity", "unit")
    for name, value, choices in (("resize", resize, RESIZE_MODES), ("intensity", intensity, INTENSITY_MODES)):
        if value not in choices:
            raise ConfigError(f"preprocessing {name}={value!r}; expected one of {', '.join(choices)}")
    image = prepare_image(pixels, preprocessing["image_size"], preprocessing["in_channels"], resize=resize)
    return normalize_intensity(image, intensity, preprocessing["mean"], preprocessing["std"])


def image_size_of(file: Path) -> tuple[int, int]:
    """(width, height) from the file header, or a DataError naming the file."""
    try:
        with Image.open(file) as img:
            return img.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise DataError(f"{file}: cannot read the image ({err}); expected a PNG, JPEG or TIFF file") from err


def read_csv_records(path: Path, require_mask: bool = True) -> list[dict[str, Any]]:
    """Raw rows of a generic-format CSV: ``image``/``mask`` resolved against the CSV's folder (without
    ``require_mask``, a CSV of new images may leave out the mask column: ``mask`` is then None); every
    other column's cell, as text, in ``columns``."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found; expected a CSV with columns image,mask,text")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's "CSV UTF-8" starts with a BOM
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in columns and (require_mask or c != "mask")]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {columns}, "
                                f"expected image,mask,text" + ("" if require_mask else " (mask optional)"))
            extra = [c for c in columns if c and c not in REQUIRED_COLUMNS]  # "": a header's trailing comma
            raw = list(reader)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})") from err
    return [{"image": path.parent / (rec["image"] or ""),
             "mask": path.parent / (rec["mask"] or "") if "mask" in rec else None,
             "text": rec["text"], "where": f"{path} row {line}", "line": line, "key": (rec["image"], rec.get("mask")),
             "columns": {c: rec[c] or "" for c in extra}}
            for line, rec in enumerate(raw, start=2)]


def validate_records(records: list[dict[str, Any]], source: Path) -> list[dict[str, Any]]:
    """Check every record (text, duplicates, files, sizes); returns rows with ``size`` added.

    Each record holds ``image``, ``mask`` (paths), ``text`` (raw cell), ``where`` ("file row N"), ``line``,
    ``key`` (the row's file names, for duplicate detection) and optionally ``columns`` (other cells by name).
    """
    if not records:
        raise DataError(f"{source}: no rows; expected at least one image,mask,text row")
    rows, seen = [], {}
    for rec in records:
        where, text = rec["where"], rec["text"]
        if text is None or (isinstance(text, float) and math.isnan(text)):
            text = ""
        if not isinstance(text, str):
            raise DataError(f"{where}: text is {text!r} ({type(text).__name__}); expected a string")
        text = text.translate(ZERO_WIDTH).strip()
        if not text:
            raise DataError(f"{where}: column 'text' is empty (or only invisible characters); expected the "
                            f"referring text")
        if text.lower() in MISSING_VALUE_MARKERS:
            raise DataError(f"{where}: text is {text!r}, a spreadsheet's mark for a missing value; expected the "
                            f"referring text")
        key = (*rec["key"], text)
        if key in seen:
            raise DataError(f"{where}: duplicates row {seen[key]} (same image, mask and text)")
        seen[key] = rec["line"]
        for col in ("image", "mask"):
            if rec[col] is not None and not rec[col].is_file():
                raise DataError(f"{where}: {col} file '{rec[col]}' not found")
        isize = image_size_of(rec["image"])
        msize = image_size_of(rec["mask"]) if rec["mask"] is not None else isize
        if isize != msize:
            raise DataError(f"{where}: mask '{rec['mask']}' is {msize[0]}x{msize[1]} but its image is "
                            f"{isize[0]}x{isize[1]}; expected the same size")
        rows.append({"image": rec["image"], "mask": rec["mask"], "text": text, "size": isize, "line": rec["line"],
                     "columns": rec.get("columns", {})})
    return rows


def assign_ids(rows: list[dict[str, Any]]) -> None:
    """Sets each row's ``id`` (its prediction file name): the image's stem, ``<stem>_<k>`` for an image
    with several texts or for stems shared by several files, unique even ignoring case (``x`` and ``x_0``
    and ``X`` never collide)."""
    stems = Counter(row["image"].stem.casefold() for row in rows)
    taken: set[str] = set()
    seen: Counter[str] = Counter()
    for row in rows:
        stem = row["image"].stem
        key = stem.casefold()
        while True:
            candidate = stem if stems[key] == 1 and not seen[key] else f"{stem}_{seen[key]}"
            seen[key] += 1
            if candidate.casefold() not in taken:
                break
        taken.add(candidate.casefold())
        row["id"] = candidate


class ImageTextMaskDataset(Dataset):
    """Image-mask-text rows: a generic-format CSV (columns ``image,mask,text``, paths relative to the CSV),
    or ``records`` from another reader (see ``validate_records``).

    Every row is checked when the dataset is built (columns, empty text, duplicate rows, files present,
    image and mask of the same size); mask values are checked as each mask is read. An image is resized
    (``resize``), then image and mask go through ``augmentation`` (``aug(image, mask)`` on a batch of one,
    e.g. ``random_zoom``; training only), then the image's intensities are normalised (``intensity``, see
    ``normalize_intensity``). Columns other than ``image,mask,text`` (``columns``) reach each sample as
    ``item["columns"][name]``.
    """

    def __init__(self, csv_path: str | Path | None = None, image_size: int = 224, in_channels: int = 1,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.25,),
                 records: list[dict[str, Any]] | None = None, source: str | Path | None = None,
                 require_mask: bool = True, resize: Resize = "bilinear", intensity: Intensity = "unit",
                 augmentation: Callable[[Tensor, Tensor], tuple[Tensor, ...]] | None = None) -> None:
        self.image_size = image_size
        self.in_channels = in_channels
        self.mean, self.std = mean, std
        self.resize, self.intensity, self.augmentation = resize, intensity, augmentation
        if records is None:
            if csv_path is None:
                raise ValueError("ImageTextMaskDataset needs csv_path or records")
            source = Path(csv_path)
            records = read_csv_records(source, require_mask)
        self.source = Path(source or "records")
        self.rows = validate_records(records, self.source)
        assign_ids(self.rows)
        self.columns = tuple(self.rows[0]["columns"])

    def __len__(self) -> int:
        return len(self.rows)

    def text_of(self, index: int) -> str:
        return self.rows[index]["text"]

    def columns_of(self, index: int) -> dict[str, str]:
        return self.rows[index]["columns"]

    def where_of(self, index: int) -> str:
        """``"<file> row N"``: where the sample at ``index`` comes from, for error messages."""
        return f"{self.source} row {self.rows[index]['line']}"

    def load_image(self, file: Path) -> Tensor:
        """``(C, S, S)`` image in [0, 1], converted to ``in_channels`` and resized (``prepare_image``)."""
        return prepare_image(_read_array(file), self.image_size, self.in_channels, file, self.resize)

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
        mask = self.load_mask(row["mask"]) if row["mask"] is not None else None
        return self.make_item(index, *self.finish_sample(self.load_image(row["image"]), mask))

    @property
    def per_sample_pipeline(self) -> bool:
        """True when a decoded image needs more than ``(x - mean) / std``: a training zoom or a per-image
        intensity normalisation (a loader cache then finishes its samples with ``finish_sample``)."""
        return self.augmentation is not None or self.intensity != "unit"

    def finish_sample(self, image: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The resized ``[0, 1]`` image and its mask through ``augmentation`` (with a mask), then ``intensity``."""
        if self.augmentation is not None and mask is not None:
            image, mask = (t[0] for t in self.augmentation(image[None], mask[None])[:2])
        return normalize_intensity(image, self.intensity, self.mean, self.std), mask

    def make_item(self, index: int, image: Tensor, mask: Tensor | None) -> dict[str, Any]:
        """The sample of row ``index`` holding ``image`` and ``mask`` as given (prepared by ``__getitem__``, or
        read from a loader cache)."""
        row = self.rows[index]
        item = {
            "image": image,
            "text": row["text"],
            "id": row["id"],
            "image_path": str(row["image"]),
            "orig_size": torch.tensor([row["size"][1], row["size"][0]]),
            "columns": row["columns"],
        }
        if mask is not None:
            item["mask"] = mask
        return item

    def make_batch(self, indices: Sequence[int], images: Tensor, masks: Tensor | None) -> dict[str, Any]:
        """The collated batch of rows ``indices`` holding ``images`` ``(B, C, S, S)`` and ``masks``: what
        ``default_collate`` makes of their ``make_item`` samples (texts, ids and paths as lists, ``orig_size``
        ``(B, 2)``, ``columns`` as ``{name: [cell per sample]}``), built without the per-sample dicts."""
        rows = [self.rows[i] for i in indices]
        batch = {
            "image": images,
            "text": [row["text"] for row in rows],
            "id": [row["id"] for row in rows],
            "image_path": [str(row["image"]) for row in rows],
            "orig_size": torch.tensor([[row["size"][1], row["size"][0]] for row in rows]),
            "columns": {name: [row["columns"][name] for row in rows] for name in self.columns},
        }
        if masks is not None:
            batch["mask"] = masks
        return batch


def swap_partners(texts: Sequence[str], seed: int) -> list[int]:
    """For each sample, another sample whose text differs from its own: a fixed-seed derangement, each
    partner with the same text moved on (in the derangement's order) to the next one with a different
    text. When every text is the same there is no such partner, and the derangement is returned."""
    order = derangement(len(texts), seed)
    if len(set(texts)) < 2:
        return order
    position = {j: k for k, j in enumerate(order)}
    partners = []
    for i, j in enumerate(order):
        k = position[j]
        while texts[order[k]] == texts[i]:
            k = (k + 1) % len(order)
        partners.append(order[k])
    return partners


class SwappedTextDataset(Dataset):
    """The test split with what its text-robustness protocols need: ``swap_text``, the text of another sample,
    always a different text (``swap_partners``; a warning naming ``source`` when the split has a single
    distinct text, then swapped-text Dice = Dice); ``alt_texts``, the cells of ``alt_text_columns`` (texts
    to segment the same image with, ``{column: text}``); ``categories``, those of ``category_columns``.

    A named column the dataset lacks, or an empty alternative text, is a DataError naming ``source``.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, source: str = "the split",
                 alt_text_columns: Sequence[str] = (), category_columns: Sequence[str] = ()) -> None:
        self.dataset = dataset
        texts = [dataset.text_of(i) for i in range(len(dataset))]
        self.partner = swap_partners(texts, seed)
        if len(set(texts)) < 2:
            log.warning("%s: %s; the swapped-text Dice cannot measure text adherence and equals the Dice", source,
                        "a single sample" if len(texts) == 1 else f"all {len(texts)} samples have the same text")
        available = tuple(getattr(dataset, "columns", ()))
        for option, names in (("alt_text_columns", alt_text_columns), ("category_columns", category_columns)):
            for name in names:
                if name not in available:
                    raise DataError(f"{source}: no column '{name}' (named by data.{option}); the columns besides "
                                    f"image and mask are {', '.join(('text', *available))}")
        self.alt_text_columns, self.category_columns = tuple(alt_text_columns), tuple(category_columns)
        for index in range(len(dataset) if self.alt_text_columns else 0):
            cells = dataset.columns_of(index)
            for name in self.alt_text_columns:
                if not cells[name].strip():
                    where = dataset.where_of(index) if hasattr(dataset, "where_of") else f"{source} sample {index}"
                    raise DataError(f"{where}: column '{name}' is empty; expected an alternative text in every "
                                    f"row (data.alt_text_columns)")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        item["swap_text"] = self.dataset.text_of(self.partner[index])
        cells = item.get("columns", {})
        item["alt_texts"] = {name: cells[name].strip() for name in self.alt_text_columns}
        item["categories"] = {name: cells[name] for name in self.category_columns}
        return item
