"""Segmentation losses, each written once and shared by every method.

All losses take raw logits ``(B, 1, H, W)`` and a binary target of the same shape, and compute in
fp32 whatever the autocast dtype.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss


def dice_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None, smooth: float = 1.0,
              squared: bool = False) -> Tensor:
    """Soft Dice loss ``1 - (2|P∩G| + s) / (|P| + |G| + s)``, per image then averaged over the batch.

    ``weight`` (broadcastable to ``logits``) weights every pixel in both sums (LSMS Eq. 13). ``squared``
    sums ``p^2`` and ``g^2`` in the denominator instead (the V-Net form, which LViT's code uses).
    """
    prob = torch.sigmoid(logits.float())
    target = target.float()
    if weight is None:
        weight = torch.ones_like(prob)
    weight = weight.float().expand_as(prob)
    dims = tuple(range(1, prob.ndim))
    inter = (weight * prob * target).sum(dims)
    power = 2 if squared else 1
    denom = (weight * prob**power).sum(dims) + (weight * target**power).sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits, mean over pixels."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def balanced_bce_loss(logits: Tensor, target: Tensor, positive_weight: float = 0.5) -> Tensor:
    """Class-balanced BCE on logits: ``w * mean_{g=1} BCE + (1 - w) * mean_{g=0} BCE`` over the whole batch.

    Each class's pixels are averaged on their own, so a small lesion weighs as much as the background
    (LViT's ``WeightedBCE`` with weights 0.5/0.5); a class absent from the batch contributes 0.
    """
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    pos = (target > 0.5).float()
    neg = 1.0 - pos
    return (positive_weight * (bce * pos).sum() / pos.sum().clamp_min(1.0)
            + (1.0 - positive_weight) * (bce * neg).sum() / neg.sum().clamp_min(1.0))


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
    """Dice loss with pixel weights ``W = λE + (1 - E)`` on the boundary band E (LSMS Eq. 13)."""
    edge = boundary_map(target, kernel_size)
    weight = boundary_weight * edge + (1.0 - edge)
    return dice_loss(logits, target, weight=weight)


def pixel_text_contrastive_loss(
    pixels: Tensor, text: Tensor, target: Tensor, temperature: float = 0.1, num_samples: int = 256,
    generator: torch.Generator | None = None, form: Literal["infonce", "literal"] = "infonce",
) -> Tensor:
    """Vision-language pixel contrastive loss (LSMS Eq. 14), in fp32: InfoNCE form, or Eq. 14 as printed.

    ``pixels`` (B, C, h, w) pixel features, ``text`` (B, C) the projected mean word feature L_avg,
    ``target`` (B, 1, H, W) binary mask (resized to h x w by nearest neighbour). Per image, at most
    ``num_samples`` positive pixels p_i and ``num_samples`` negative pixels n_j are drawn; each p_i
    is pulled to L_avg and pushed from every n_j: ``-log(e^{p.L/τ} / (e^{p.L/τ} + Σ_j e^{p.n_j/τ}))``
    on L2-normalised features (``form="infonce"``). ``form="literal"`` is Eq. 14 as printed, without the log:
    ``-e^{p.L/τ} / (e^{p.L/τ} + Σ_j e^{p.n_j/τ})``, in [-1, 0] (a different scale, so α weighs it differently).
    Images without positive pixels are skipped; 0 if none has any.
    """
    if form not in ("infonce", "literal"):
        raise ValueError(f"form must be 'infonce' or 'literal', got {form!r}")
    pixels = F.normalize(pixels.float(), dim=1)
    text = F.normalize(text.float(), dim=1)
    target = F.interpolate(target.float(), size=pixels.shape[-2:], mode="nearest").flatten(1) > 0.5  # (B, h*w)
    feats = pixels.flatten(2).transpose(1, 2)  # (B, h*w, C)
    terms = []
    for b in range(pixels.shape[0]):
        pos, neg = target[b].nonzero().squeeze(1), (~target[b]).nonzero().squeeze(1)
        if pos.numel() == 0:
            continue
        pos = pos[torch.randperm(pos.numel(), device=pos.device, generator=generator)[:num_samples]]
        neg = neg[torch.randperm(neg.numel(), device=neg.device, generator=generator)[:num_samples]]
        p, n = feats[b, pos], feats[b, neg]  # (P, C), (N, C)
        logits = torch.cat([p @ text[b, :, None], p @ n.T], dim=1) / temperature  # (P, 1 + N)
        if form == "literal":
            terms.append(-logits.softmax(dim=1)[:, 0])
        else:
            terms.append(torch.logsumexp(logits, dim=1) - logits[:, 0])
    if not terms:
        return pixels.sum() * 0.0
    return torch.cat(terms).mean()
def conditioned_similarity(v: Tensor, e: Tensor, w_v: Tensor, w_e: Tensor, word_mask: Tensor,
                           padding: Literal["exclude", "zero"] = "exclude") -> Tensor:
    """Image-text similarity of every pair in a batch (RecLMIS Eq. 5), ``(B_images, B_texts)`` in fp32.

    ``S(v, e) = 1/2 (sum_i w_v^i max_j a_ij + sum_j w_e^j max_i a_ij)`` with ``a_ij = cos(v_i, e_j)``;
    ``v (B, N, C)`` patches with weights ``w_v (B, N)``, ``e (B, L, C)`` words with weights ``w_e (B, L)``.
    A padding word (``word_mask`` False) scores 0 as a word. In a patch's max over words it is left out
    (``padding="exclude"``) or scores 0 (``"zero"``, the official code: a patch whose real words all have a
    negative cosine then scores 0).
    """
    if padding not in ("exclude", "zero"):
        raise ValueError(f"padding must be 'exclude' or 'zero', got {padding!r}")
    with torch.autocast(v.device.type, enabled=False):
        v = F.normalize(v.float(), dim=-1)
        e = F.normalize(e.float(), dim=-1)
        a = torch.einsum("anc,blc->abnl", v, e)  # (B_img, B_txt, N, L)
        pad = ~word_mask[None, :, None, :]
        pad_score = float("-inf") if padding == "exclude" else 0.0
        patch_best = a.masked_fill(pad, pad_score).amax(-1)  # (B_img, B_txt, N): best word per patch
        word_best = a.amax(-2).masked_fill(~word_mask[None], 0.0)  # (B_img, B_txt, L): best patch per word
        return 0.5 * (torch.einsum("abn,an->ab", patch_best, w_v.float())
                      + torch.einsum("abl,bl->ab", word_best, w_e.float()))


def conditioned_contrastive_loss(v: Tensor, e: Tensor, w_v: Tensor, w_e: Tensor, word_mask: Tensor,
                                 temperature: float = 0.07,
                                 padding: Literal["exclude", "zero"] = "exclude") -> Tensor:
    """Symmetric InfoNCE over the batch on the conditioned similarity (RecLMIS Eq. 4-6), fp32.

    ``padding``: how padding words enter each patch's max over words (see ``conditioned_similarity``).
    """
    logits = conditioned_similarity(v, e, w_v, w_e, word_mask, padding) / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def weighted_reconstruction_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Token-weighted MSE ``sum_i w_i |x_i - x_hat_i|^2`` (RecLMIS Eq. 8, 10), averaged over batch and channels.

    ``pred``/``target`` ``(B, N, C)``, ``weight (B, N)`` summing to 1 per row (the softmax conditions), so
    uniform weights give the plain MSE; zero-weight tokens (padding words) do not count.
    """
    err = (pred.float() - target.float()).pow(2).mean(-1)  # (B, N)
    return (weight.float() * err).sum(1).mean()
def roi_l1_loss(pseudo_image: Tensor, image: Tensor, target: Tensor) -> Tensor:
    """Mean L1 distance between a generated image and the image inside the target ROI, ``|P - I * M|``.

    Early fusion (arXiv 2510.12482) uses it, weighted by 0.1, to make the text's pseudo-image paint the
    region the text refers to; ``target`` ``(B, 1, H, W)`` broadcasts over the image's channels.
    """
    return F.l1_loss(pseudo_image.float(), image.float() * target.float())
