"""LViT-style U-Net: a conv encoder and a decoder whose skip connections pass through LViT's PLAM."""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from langseg.blocks.layers import ConvNormAct


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv (with bias) -> BatchNorm -> ReLU layers."""
    return nn.Sequential(ConvNormAct(in_channels, out_channels, bias=True),
                         ConvNormAct(out_channels, out_channels, bias=True))


class PixelLevelAttention(nn.Module):
    """LViT's pixel-level attention module (PLAM): a per-pixel weight from channel-average and channel-max maps.

    ``w = MLP([avg, max, avg + max])`` with ``avg = mean_c ReLU(W_a x)`` and ``max = max_c ReLU(W_m x)``
    (1x1 convs); the output is ``w * x``.
    """

    def __init__(self, channels: int, hidden: int = 6) -> None:
        super().__init__()
        self.avg_proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.max_proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.mlp = nn.Sequential(nn.Conv2d(3, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        avg = torch.relu(self.avg_proj(x)).mean(1, keepdim=True)  # (B, 1, H, W)
        mx = torch.relu(self.max_proj(x)).amax(1, keepdim=True)
        return self.mlp(torch.cat([avg, mx, avg + mx], 1)) * x


class UNetEncoder(nn.Module):
    """U-Net encoder (LViT layout): one 3x3 conv stem, then four max-pool + double-conv stages.

    Returns the five feature maps, finest first: ``widths[i]`` channels at stride ``2**i``.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (64, 128, 256, 512, 512)) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.stem = ConvNormAct(in_channels, widths[0], bias=True)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), double_conv(c_in, c_out)) for c_in, c_out in pairwise(widths))

    @property
    def output_stride(self) -> int:
        """Stride of the coarsest map (2 per max-pool stage); input sides must be multiples of it."""
        return 2 ** len(self.stages)


    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


class UpBlockPLAM(nn.Module):
    """Decoder step: nearest 2x upsampling, PLAM on the skip, concatenation, double conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.plam = PixelLevelAttention(skip_channels)
        self.convs = double_conv(in_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat([self.plam(skip), self.up(x)], 1))


class UNetDecoder(nn.Module):
    """U-Net decoder of LViT: up-blocks with PLAM skips, widths halving as in LViT, then a 1x1 mask head.

    The block fed by skip ``i`` outputs ``widths[max(i - 1, 0)]`` channels (512+512 -> 256 -> 128 -> 64 -> 64
    for the default widths).
    """

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512, 512), out_channels: int = 1) -> None:
        super().__init__()
        blocks = []
        c_in = widths[-1]
        for i in range(len(widths) - 2, -1, -1):
            c_out = widths[max(i - 1, 0)]
            blocks.append(UpBlockPLAM(c_in, widths[i], c_out))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c_in, out_channels, 1)

    def forward(self, bottleneck: Tensor, skips: Sequence[Tensor]) -> Tensor:
        """``bottleneck`` at the coarsest stride, ``skips`` the encoder maps finest first (without the coarsest)."""
        x = bottleneck
        for block, skip in zip(self.blocks, reversed(skips)):
            x = block(x, skip)
        return self.head(x)
