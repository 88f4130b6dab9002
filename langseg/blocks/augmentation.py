"""Training-time augmentation on the device (kornia): ``aug(image, mask, *aligned) -> (image, mask, *aligned)``.

A horizontal flip swaps the patient's left and right. Use ``hflip_prob > 0`` only where the text names no
side, or where the side has already been turned into a place in an image that is flipped with it (early
fusion's pseudo-image); otherwise the flipped mask contradicts the text.
"""
from __future__ import annotations

from typing import Literal

import kornia.augmentation as K
import torch
from torch import Tensor, nn


class JointAugmentation(nn.Module):
    """One random geometric transform per sample (horizontal flip, then rotation/scale/shift), shared by the
    image, its mask and every aligned image (stacked on the channel axis, so one draw serves all).

    ``resample`` interpolates the images (the mask is always resampled nearest); ``padding_mode`` fills what
    the transform brings in from outside: ``"zeros"`` or ``"border"`` (the edge pixels repeated).
    """

    def __init__(self, hflip_prob: float = 0.5, rotation_degrees: float | tuple[float, float] = 15.0,
                 scale: tuple[float, float] = (0.9, 1.1), translate: float = 0.1, affine_prob: float = 0.5,
                 resample: Literal["bilinear", "bicubic"] = "bilinear",
                 padding_mode: Literal["zeros", "border"] = "zeros") -> None:
        super().__init__()
        self.augment = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=hflip_prob),
            K.RandomAffine(degrees=rotation_degrees, translate=(translate, translate), scale=scale, p=affine_prob,
                           resample=resample, padding_mode=padding_mode),
            data_keys=["input", "mask"])

    def forward(self, image: Tensor, mask: Tensor, *aligned: Tensor) -> tuple[Tensor, ...]:
        stacked = torch.cat([image, *(a.to(image.dtype) for a in aligned)], 1)  # (B, C + sum C_k, H, W)
        stacked, mask = self.augment(stacked, mask.to(stacked.dtype))
        parts = torch.split(stacked, [image.shape[1], *(a.shape[1] for a in aligned)], 1)
        return (parts[0], mask, *parts[1:])


def random_zoom(min_zoom: float = 0.95, max_zoom: float = 1.2, prob: float = 0.1,
                resample: Literal["bilinear", "bicubic"] = "bilinear",
                padding_mode: Literal["zeros", "border"] = "zeros") -> JointAugmentation:
    """A random zoom of image and mask about the centre by a factor drawn from [min_zoom, max_zoom], with
    probability ``prob``: the official GuideDecoder / HiMix / MMI-UNet training augmentation (MONAI's ``RandZoomd``
    0.95-1.2 at p=0.1 resamples bicubic with edge padding: ``resample="bicubic", padding_mode="border"``)."""
    return JointAugmentation(hflip_prob=0.0, rotation_degrees=0.0, scale=(min_zoom, max_zoom), translate=0.0,
                             affine_prob=prob, resample=resample, padding_mode=padding_mode)


class PhotometricAugmentation(nn.Module):
    """Gaussian blur with a random sigma, then brightness and contrast jitter (plus saturation and hue on RGB
    batches) of the image.

    Photometric only: the mask, the aligned images and the text stay valid. Each image is mapped to [0, 1]
    by its own min/max, augmented, and mapped back, so normalised inputs are handled. ``brightness`` adds a shift
    drawn from [-brightness, brightness] of that range (0: none, the default); ``hue`` is a fraction of the colour
    circle; ``contrast`` and ``saturation`` scale by a factor in [1 - x, 1 + x].
    """

    def __init__(self, blur_sigma: tuple[float, float] = (0.1, 2.0), contrast: float = 0.2, saturation: float = 0.2,
                 hue: float = 0.05, p: float = 0.5, brightness: float = 0.0) -> None:
        super().__init__()
        self.blur = K.RandomGaussianBlur(5, blur_sigma, p=p)
        self.gray = K.ColorJiggle(brightness=brightness, contrast=contrast, p=p)
        self.colour = K.ColorJiggle(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=p)

    def forward(self, image: Tensor, mask: Tensor, *aligned: Tensor) -> tuple[Tensor, ...]:
        lo = image.amin((1, 2, 3), keepdim=True)
        scale = (image.amax((1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
        jiggle = self.colour if image.shape[1] == 3 else self.gray
        return (jiggle(self.blur((image - lo) / scale)) * scale + lo, mask, *aligned)
