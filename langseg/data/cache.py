"""A decoded-image cache for folder datasets: every image and mask decoded, converted and resized once into
memory-mapped integer arrays on disk, so that later epochs (and runs) read pixels instead of decoding PNGs."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from langseg.data.datasets import ImageTextMaskDataset
from langseg.errors import ConfigError
from langseg.files import atomic_write

log = logging.getLogger("langseg")
CACHE_FORMAT = 1  # bumped when the arrays' layout or their preparation changes
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def check_cache_dir(folder: Path) -> None:
    """Creates ``folder`` if needed; a ConfigError naming it when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"data.cache_dir '{folder}' cannot be written ({err.strerror or err}); pass a writable "
                          f"folder as --data.cache_dir, or --data.cache false to decode the images every epoch") from err


def _fingerprint(dataset: ImageTextMaskDataset) -> str:
    """Hash of what the cached pixels depend on: every source file's path, size and modification time, the
    image size, the channels, the resize method and the cache format (not the zoom nor the normalisation,
    applied when a sample is read)."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, dataset.image_size, dataset.in_channels,
                                        dataset.resize]).encode())
    for row in dataset.rows:
        for path in (row["image"], row["mask"]):
            if path is not None:
                stat = Path(path).stat()
                digest.update(f"{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _image_dtype(dataset: ImageTextMaskDataset) -> np.dtype:
    """uint8, or uint16 when a source image has more than 8 bits (read from the file headers)."""
    for row in dataset.rows:
        with Image.open(row["image"]) as img:
            if img.mode in SIXTEEN_BIT_MODES:
                return np.dtype(np.uint16)
    return np.dtype(np.uint8)


class _Decoded(Dataset):
    """The prepared ``(C, S, S)`` image in [0, 1] and ``(1, S, S)`` mask of each row (no normalisation)."""

    def __init__(self, dataset: ImageTextMaskDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.dataset.rows[index]
        image = self.dataset.load_image(row["image"])
        mask = self.dataset.load_mask(row["mask"]) if row["mask"] is not None else torch.zeros(1, *image.shape[1:])
        return image, mask


class CachedImageDataset(Dataset):
    """An ``ImageTextMaskDataset`` whose prepared pixels are read from ``cache_dir``.

    With the default pipeline samples hold the cached integers as they are: ``image`` uint8 ``(C, S, S)`` (uint16 for 16-bit sources; within
    half a grey level of the decoded image) and ``mask`` uint8 0/1 (exact), a quarter of the bytes a loader worker
    would otherwise send; ``to_model_input`` scales and normalises a batch of them on its device
    (``ImageTextMaskDataModule`` does it in ``on_after_batch_transfer``). With a training zoom or a per-image
    intensity normalisation (``per_sample_pipeline``) each sample is finished from the cached pixels in the loader
    instead (``ImageTextMaskDataset.finish_sample``), as floats. A loader reads a whole batch with one
    indexed read per array, held collated (``__getitems__``; ``collate``, its ``collate_fn``, passes the batch on).

    The arrays are ``<cache_dir>/<csv name>-<fingerprint>.{images,masks}.npy``; the fingerprint changes when a
    source file (path, size, modification time), ``image_size`` or ``in_channels`` changes, and then the split
    is decoded again (by ``num_workers`` loader processes, with a log line before and after) and written to a
    temporary file that is renamed into place; older arrays of the same split are removed.
    """

    def __init__(self, dataset: ImageTextMaskDataset, cache_dir: str | Path, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.source = dataset.source
        self.columns = dataset.columns  # the CSV's extra columns: they choose the test protocols' texts
        self.cache_dir = Path(cache_dir)
        check_cache_dir(self.cache_dir)
        stem = f"{dataset.source.stem}-{_fingerprint(dataset)}"
        self.paths = {kind: self.cache_dir / f"{stem}.{kind}.npy" for kind in ("images", "masks")}
        if not all(path.is_file() for path in self.paths.values()):
            self._build(num_workers)
        self._arrays: dict[str, np.ndarray] | None = None  # opened in each process that reads (see __getstate__)

    def _build(self, num_workers: int) -> None:
        n, size, channels = len(self.dataset), self.dataset.image_size, self.dataset.in_channels
        dtype = _image_dtype(self.dataset)
        scale = float(np.iinfo(dtype).max)
        log.info("%s: decoding %d images once into the loader cache %s (%dx%d, %s)", self.source, n, self.cache_dir,
                 size, size, dtype.name)
        start = time.perf_counter()
        images = np.empty((n, channels, size, size), dtype)
        masks = np.empty((n, 1, size, size), np.uint8)
        loader = DataLoader(_Decoded(self.dataset), batch_size=16, num_workers=num_workers)
        done = 0
        for image, mask in loader:
            images[done:done + len(image)] = (image * scale).round().numpy().astype(dtype)
            masks[done:done + len(mask)] = mask.numpy().astype(np.uint8)
            done += len(image)
        for kind, array in (("images", images), ("masks", masks)):
            atomic_write(self.paths[kind], lambda tmp, array=array: np.save(tmp, array, allow_pickle=False))
        for old in self.cache_dir.glob(f"{self.dataset.source.stem}-*.npy"):
            if old not in self.paths.values():
                old.unlink(missing_ok=True)
        log.info("%s: loader cache written in %.1f s (%.1f MB)", self.source, time.perf_counter() - start,
                 (images.nbytes + masks.nbytes) / 1e6)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}  # a loader worker maps the files itself instead of copying them

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {kind: np.load(path, mmap_mode="r") for kind, path in self.paths.items()}
        return self._arrays

    def __len__(self) -> int:
        return len(self.dataset)

    def text_of(self, index: int) -> str:
        return self.dataset.text_of(index)

    def columns_of(self, index: int) -> dict[str, str]:
        return self.dataset.columns_of(index)

    def where_of(self, index: int) -> str:
        return self.dataset.where_of(index)

    def _pixels(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images ``(B, C, S, S)`` and masks ``(B, 1, S, S)`` (None when a row has no mask) of ``indices``, read
        with one indexed read per array: cached integers, or finished floats with a per-sample pipeline."""
        arrays = self._open()
        images = torch.from_numpy(arrays["images"][indices])  # integers copied out of the map
        masks = torch.from_numpy(arrays["masks"][indices])
        has_masks = all(self.dataset.rows[i]["mask"] is not None for i in indices)
        if not self.dataset.per_sample_pipeline:
            return images, masks if has_masks else None
        images = images.float() / (65535.0 if images.dtype == torch.uint16 else 255.0)
        finished = [self.dataset.finish_sample(images[k], masks[k].float() if has_masks else None)
                    for k in range(len(indices))]
        return torch.stack([image for image, _ in finished]), torch.stack([mask for _, mask in finished]) if has_masks else None

    def __getitem__(self, index: int) -> dict[str, Any]:
        images, masks = self._pixels([index])
        return self.dataset.make_item(index, images[0], masks[0] if masks is not None else None)

    def __getitems__(self, indices: list[int]) -> CollatedSamples:
        """The samples at ``indices``, held as their collated batch (``ImageTextMaskDataset.make_batch``): what a
        ``DataLoader`` calls; ``collate`` passes the batch on."""
        return CollatedSamples(self.dataset.make_batch(indices, *self._pixels(indices)))


def _sample_of(value: Any, k: int) -> Any:
    """Sample ``k``'s part of a collated ``value``: row ``k`` of a tensor or list, and so within a dict."""
    return {key: _sample_of(v, k) for key, v in value.items()} if isinstance(value, dict) else value[k]


class CollatedSamples(Sequence[dict[str, Any]]):
    """A list of samples held as their collated ``batch``: ``collate`` returns the batch as it is, and any other
    reader (``default_collate``, a ``Subset``) sees the samples, each cut out of the batch when asked."""

    def __init__(self, batch: dict[str, Any]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["id"])

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not -len(self) <= k < len(self):
            raise IndexError(f"sample {k} of a batch of {len(self)}")
        return _sample_of(self.batch, k)


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A loader's batch: ``default_collate`` of a list of samples; the batch of ``CollatedSamples`` as it is."""
    return samples.batch if isinstance(samples, CollatedSamples) else default_collate(samples)


def to_model_input(batch: dict[str, Any], mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """``batch`` with a cached integer ``image`` scaled to [0, 1] by its bit depth and normalised (``(x - mean) /
    std`` per channel) and an integer ``mask`` as float, on the batch's device; float images pass unchanged."""
    image = batch.get("image")
    if not isinstance(image, torch.Tensor) or image.is_floating_point():
        return batch
    scale = 65535.0 if image.dtype == torch.uint16 else 255.0
    m = torch.as_tensor(mean, dtype=torch.float32, device=image.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=image.device).reshape(1, -1, 1, 1)
    out = {**batch, "image": (image.float() / scale - m) / s}
    if isinstance(batch.get("mask"), torch.Tensor):
        out["mask"] = batch["mask"].float()
    return out
