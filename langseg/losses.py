"""Segmentation losses, each written once and shared by every method.

All losses take raw logits ``(B, 1, H, W)`` and a binary target of the same shape, and compute in
fp32 whatever the autocast dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss


def dice_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss ``1 - (2|P∩G| + s) / (|P| + |G| + s)``, per image then averaged over the batch.

    ``weight`` (broadcastable to ``logits``) weights every pixel in both sums (LSMS Eq. 14).
    """
    prob = torch.sigmoid(logits.float())
    target = target.float()
    if weight is None:
        weight = torch.ones_like(prob)
    weight = weight.float().expand_as(prob)
    dims = tuple(range(1, prob.ndim))
    inter = (weight * prob * target).sum(dims)
    denom = (weight * prob).sum(dims) + (weight * target).sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits, mean over pixels."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al.), mean over pixels."""
    return sigmoid_focal_loss(logits.float(), target.float(), alpha=alpha, gamma=gamma, reduction="mean")


def boundary_map(mask: Tensor, kernel_size: int = 3) -> Tensor:
    """Boundary band ``E = dilate(M) - erode(M)`` of a binary mask (LSMS Eq. 13), same shape."""
    pad = kernel_size // 2
    mask = mask.float()
    dilated = F.max_pool2d(mask, kernel_size, stride=1, padding=pad)
    eroded = -F.max_pool2d(-mask, kernel_size, stride=1, padding=pad)
    return dilated - eroded


def boundary_weighted_dice_loss(
    logits: Tensor, target: Tensor, boundary_weight: float = 1.2, kernel_size: int = 3
) -> Tensor:
    """Dice loss with pixel weights ``W = λE + (1 - E)`` on the boundary band E (LSMS Eq. 13-14)."""
    edge = boundary_map(target, kernel_size)
    weight = boundary_weight * edge + (1.0 - edge)
    return dice_loss(logits, target, weight=weight)


def roi_l1_loss(pseudo_image: Tensor, image: Tensor, target: Tensor) -> Tensor:
    """Mean L1 distance between a generated image and the image inside the target ROI, ``|P - I * M|``.

    Early fusion (arXiv 2510.12482) uses it, weighted by 0.1, to make the text's pseudo-image paint the
    region the text refers to; ``target`` ``(B, 1, H, W)`` broadcasts over the image's channels.
    """
    return F.l1_loss(pseudo_image.float(), image.float() * target.float())
