"""LSMS Full-Scale Decoder (Sec. III-D, Eq. 11-12)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langseg.blocks.hamburger import HamburgerHead
from langseg.errors import ConfigError


class FullScaleDecoder(nn.Module):
    """``Seg(InterScale(Concat[P_i]))`` (Eq. 11-12): features resized to one scale, a Hamburger head, a 1x1 conv.

    ``in_channels`` are the widths of every encoder stage; ``stages`` picks which ones are decoded
    (0-based; the paper's default P2, P3, P4 is ``(1, 2, 3)``). ``align_stage`` is the stage whose size
    the features are aligned to: 0 = F_1 (H/4), as Eq. 11 reads; 1 = F_2 (H/8), as SegNeXt's Hamburger
    decoder does and as the paper's 8.91 GFLOPs imply. ``forward`` returns the pixel features at that size
    (for the contrastive loss) and the logits at ``out_size``.
    """

    def __init__(self, in_channels: tuple[int, ...] = (64, 128, 320, 512), stages: tuple[int, ...] = (1, 2, 3),
                 ham_channels: int = 256, channels: int = 256, nmf_rank: int = 16, num_classes: int = 1,
                 align_stage: int = 0) -> None:
        super().__init__()
        if not 0 <= align_stage < len(in_channels):
            raise ConfigError(f"align_stage={align_stage} is not an encoder stage (0..{len(in_channels) - 1})")
        self.stages = tuple(stages)
        self.align_stage = align_stage
        self.head = HamburgerHead(sum(in_channels[i] for i in self.stages), ham_channels, channels, nmf_rank)
        self.seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor], out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        size = features[self.align_stage].shape[-2:]
        aligned = [F.interpolate(features[i], size=size, mode="bilinear", align_corners=False)
                   if features[i].shape[-2:] != size else features[i] for i in self.stages]  # PositionAlign
        pixels = self.head(torch.cat(aligned, dim=1))  # (B, channels, h, w) at the aligned stage's size
        logits = F.interpolate(self.seg(pixels), size=out_size, mode="bilinear", align_corners=False)
        return pixels, logits
