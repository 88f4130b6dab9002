"""Resizing and intensity normalisation of ``(C, H, W)`` images: langseg's default and the official
GuideDecoder / HiMix pipelines (MONAI's ``Resized(mode="bicubic")``, ``NormalizeIntensityd(channel_wise=True)``,
``HistogramNormalized``), written here so that MONAI is not needed."""
from __future__ import annotations

from typing import Literal, Sequence, get_args

import numpy as np
import torch
from torch import Tensor

Resize = Literal["bilinear", "bicubic"]
Intensity = Literal["unit", "zscore", "histogram"]
RESIZE_MODES: tuple[str, ...] = get_args(Resize)
INTENSITY_MODES: tuple[str, ...] = get_args(Intensity)


def resize_image(image: Tensor, size: int, mode: Resize = "bilinear") -> Tensor:
    """``(C, size, size)`` from a ``(C, H, W)`` image in [0, 1].

    ``bilinear``: antialiased, clamped to [0, 1] (langseg's default). ``bicubic``: as MONAI's
    ``Resize(mode="bicubic")``, no antialiasing and no clamp (bicubic may overshoot the input's range).
    """
    if mode == "bilinear":
        out = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False,
                                              antialias=True)
        return out[0].clamp(0, 1)
    return torch.nn.functional.interpolate(image[None], size=(size, size), mode="bicubic", align_corners=False)[0]


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel ``(x - mean) / std`` of a ``(C, H, W)`` image in [0, 1]; one value applies to all channels."""
    m = torch.as_tensor(mean, dtype=image.dtype).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype).reshape(-1, 1, 1)
    return (image - m) / s


def zscore(image: Tensor) -> Tensor:
    """Per-image, per-channel ``(x - mean_c) / std_c`` (population std; a constant channel is only centred), as
    MONAI's ``NormalizeIntensity(channel_wise=True)``."""
    mean = image.mean((-2, -1), keepdim=True)
    std = image.std((-2, -1), keepdim=True, correction=0)
    return (image - mean) / torch.where(std == 0, torch.ones_like(std), std)


def equalize_histogram(image: Tensor, num_bins: int = 256, low: float = 0.0, high: float = 255.0) -> Tensor:
    """Histogram equalisation of the whole image (all channels together) onto [low, high], as MONAI's
    ``HistogramNormalize`` (defaults 256 bins, 0-255): the cumulative histogram, rescaled to [low, high], is
    interpolated linearly at the bin centres."""
    values = image.detach().cpu().float().numpy().ravel()  # float32 throughout, as MONAI computes it
    counts, edges = np.histogram(values, num_bins)
    centres = (edges[:-1] + edges[1:]) / 2
    cumulative = counts.cumsum().astype(np.float32)
    span = cumulative[-1] - cumulative[0]
    # a single-valued image has one non-empty bin: it maps to ``low``
    cumulative = (cumulative - cumulative[0]) / span * (high - low) + low if span else np.full_like(cumulative, low)
    out = np.interp(values, centres, cumulative).reshape(tuple(image.shape))
    return torch.from_numpy(out).to(image.dtype)


def normalize_intensity(image: Tensor, intensity: Intensity, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The model input from a resized image: ``unit`` is ``(x - mean) / std`` of the [0, 1] image (langseg's
    default), ``zscore`` the per-image, per-channel z-score (HiMix's code), ``histogram`` the histogram
    equalisation onto 0-255 (GuideDecoder's code); ``mean``/``std`` apply to ``unit`` only."""
    if intensity == "zscore":
        return zscore(image)
    if intensity == "histogram":
        return equalize_histogram(image)
    return normalize(image, mean, std)
