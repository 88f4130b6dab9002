"""Using a trained model: ``load`` a checkpoint, segment new images from a typed text, write the masks."""
from __future__ import annotations

import importlib
import sys
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from langseg.errors import ConfigError, DataError
from langseg.files import BackgroundWriter, write_png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_checkpoint(path: str | Path, option: str = "--ckpt_path") -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors memory-mapped), or a ConfigError naming it (as ``option``)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"{option} {path} {what}; expected a checkpoint file written by langseg fit "
                          f"(<run>/checkpoints/last.ckpt)")
    try:
        try:
            ckpt = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        except RuntimeError as err:  # a legacy (non-zip) torch file cannot be memory-mapped: read it whole
            if "mmap" not in str(err):
                raise
            ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file; each means the same here
        reason = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{option} {path}: not a readable checkpoint ({reason}); the file is truncated "
                          f"(e.g. written on a full disk), damaged, or not a checkpoint") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{option} {path}: holds no model weights (no 'state_dict'); expected a checkpoint "
                          f"written by langseg fit")
    return ckpt


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """The model saved in a langseg checkpoint, in eval mode, with its training data's preprocessing, e.g.
    ``model = langseg.load("last.ckpt"); mask = model.segment_image("film.png", "left lower lobe")``."""
    from langseg.models.base import LanguageGuidedSegmenter
    from langseg.registry import _load_builtin_models

    ckpt = read_checkpoint(path, option="checkpoint")
    class_path = ckpt.get("langseg_model_class")
    if class_path is None:
        raise ConfigError(f"checkpoint {path} does not record its model class (written before langseg 0.1); "
                          f"load it with <ModelClass>.load_from_checkpoint")
    _load_builtin_models()
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"checkpoint {path} holds a {class_path} model, which cannot be imported here ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, LanguageGuidedSegmenter)):
        raise ConfigError(f"checkpoint {path}: {class_path} is not a langseg model")
    model = cls.load_from_checkpoint(str(path), map_location=map_location)
    return model.eval()


def image_files(sources: Sequence[str | Path]) -> list[Path]:
    """The image files named, folders expanded to their images (sorted), or a DataError naming a bad one."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif source.is_file():
            files.append(source)
        else:
            raise DataError(f"{source}: image file not found")
    return files


def predict_images(model: Any, images: Sequence[str | Path], texts: Sequence[str], output: str | Path,
                   overlay: bool = True) -> list[Path]:
    """Segments each image with its text (one text for all, or one per image) and writes
    ``<output>/masks/<id>.png`` (0/255, the image's size) and ``<output>/overlays/<id>.png``; returns the masks."""
    from langseg.data.datasets import assign_ids, image_array

    files = image_files(images)
    if len(texts) not in (1, len(files)):
        raise ConfigError(f"{len(texts)} texts for {len(files)} images; give one text for all or one per image")
    rows = [{"image": f, "text": texts[0] if len(texts) == 1 else texts[i]} for i, f in enumerate(files)]
    assign_ids(rows)
    writer = BackgroundWriter()  # PNG encoding and writing overlap the next image's segmentation
    written = []
    try:
        for row in rows:
            pixels = image_array(row["image"])  # decoded once (a bad file: a DataError naming it), segmented and drawn
            mask = model.segment_image(pixels, row["text"] or None)
            mask_path = Path(output) / "masks" / f"{row['id']}.png"
            writer.submit(partial(_write_prediction, mask_path, mask, pixels if overlay else None,
                                  row["text"] or row["image"].name))
            written.append(mask_path)
    finally:
        writer.close(raise_error=sys.exc_info()[0] is None)  # an error of the loop's own is the one shown
    return written


def _write_prediction(mask_path: Path, mask: np.ndarray, pixels: np.ndarray | None, caption: str) -> None:
    """``masks/<id>.png`` and, given the image's pixels, ``overlays/<id>.png`` beside it."""
    from langseg.callbacks import overlay_image

    write_png(mask_path, mask.astype(np.uint8) * 255)
    if pixels is not None:
        picture = overlay_image(Image.fromarray(pixels).convert("RGB"), mask, caption)
        write_png(mask_path.parent.parent / "overlays" / mask_path.name, np.asarray(picture))
