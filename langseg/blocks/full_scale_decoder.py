"""LSMS Full-Scale Decoder (Sec. III-D, Eq. 11-12)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langseg.blocks.hamburger import HamburgerHead


class FullScaleDecoder(nn.Module):
    """``Seg(InterScale(Concat[P_i]))`` (Eq. 11-12): features resized to F_1's size, a Hamburger head, a 1x1 conv.

    ``in_channels`` are the widths of every encoder stage; ``stages`` picks which ones are decoded
    (0-based; the paper's default P2, P3, P4 is ``(1, 2, 3)``). ``forward`` returns the pixel
    features at F_1's size (for the contrastive loss) and the logits at ``out_size``.
    """

    def __init__(self, in_channels: tuple[int, ...] = (64, 128, 320, 512), stages: tuple[int, ...] = (1, 2, 3),
                 ham_channels: int = 256, channels: int = 256, nmf_rank: int = 16, num_classes: int = 1) -> None:
        super().__init__()
        self.stages = tuple(stages)
        self.head = HamburgerHead(sum(in_channels[i] for i in self.stages), ham_channels, channels, nmf_rank)
        self.seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor], out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        size = features[0].shape[-2:]
        aligned = [F.interpolate(features[i], size=size, mode="bilinear", align_corners=False)
                   if features[i].shape[-2:] != size else features[i] for i in self.stages]  # PositionAlign
        pixels = self.head(torch.cat(aligned, dim=1))  # (B, channels, H/4, W/4)
        logits = F.interpolate(self.seg(pixels), size=out_size, mode="bilinear", align_corners=False)
        return pixels, logits
