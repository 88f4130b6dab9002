"""LSMS language-guided vision encoder: Scale-aware Vision-Language Attention (SVLA) and its stages.

Ouyang et al., "LSMS: Language-guided Scale-aware MedSegmentor", Sec. III-B/C, Eq. 1-10 and Table I.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from langseg.blocks.layers import ConvNormAct
from langseg.errors import ConfigError


class StripConvUnit(nn.Sequential):
    """ConvUnit_j of Eq. 4: a depthwise ``1 x d`` conv followed by a depthwise ``d x 1`` conv."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        pad = kernel_size // 2
        super().__init__(
            nn.Conv2d(channels, channels, (1, kernel_size), padding=(0, pad), groups=channels),
            nn.Conv2d(channels, channels, (kernel_size, 1), padding=(pad, 0), groups=channels),
        )


class ScaleAwareVLAttention(nn.Module):
    """SVLA (Eq. 4-10): ``Conv1x1(V_pre + Att_V + Att_L) * V`` with ``V_pre = DWConv5x5(V)``.

    ``Att_V`` (Eq. 4) sums depthwise strip-conv units of kernel sizes ``kernel_sizes``; ``Att_L``
    (Eq. 5-9) attends from every pixel to the words, with padding words masked out of the softmax,
    in fp32. ``text_dim = 0`` drops the language branch (image-only variant, no language parameters).
    """

    def __init__(self, channels: int, text_dim: int, kernel_sizes: tuple[int, ...] = (7, 11, 21)) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.pre = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.units = nn.ModuleList(StripConvUnit(channels, k) for k in kernel_sizes)
        if text_dim > 0:
            conv_in = partial(ConvNormAct, channels, channels, 1, bias=True, norm="instance", act=None)  # 1x1 + IN
            self.w_v1, self.w_v2, self.w_f = conv_in(), conv_in(), conv_in()
            self.w_l1 = nn.Conv1d(text_dim, channels, 1)
            self.w_l2 = nn.Conv1d(text_dim, channels, 1)
        self.mix = nn.Conv2d(channels, channels, 1)

    def language_branch(self, v_pre: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """Att_L of Eq. 5-9 from ``v_pre`` (B,C,H,W), ``words`` (B,T,C_l) and ``word_mask`` (B,T) True=real."""
        b, c, h, w = v_pre.shape
        v1 = self.w_v1(v_pre).flatten(2)  # (B, C, N)
        v2 = self.w_v2(v_pre)
        words = words.transpose(1, 2)  # (B, C_l, T)
        l1, l2 = self.w_l1(words), self.w_l2(words)  # (B, C, T)
        with torch.autocast(v_pre.device.type, enabled=False):
            alpha = torch.einsum("bcn,bct->bnt", v1.float(), l1.float()) / math.sqrt(self.text_dim)
            alpha = alpha.masked_fill(~word_mask[:, None, :], float("-inf"))
            att = torch.einsum("bnt,bct->bcn", alpha.softmax(dim=-1), l2.float())
        att = att.to(v_pre.dtype).reshape(b, c, h, w)
        return self.w_f(att) * v2

    def forward(self, v: Tensor, words: Tensor | None = None, word_mask: Tensor | None = None) -> Tensor:
        v_pre = self.pre(v)
        att = v_pre + sum(unit(v_pre) for unit in self.units)
        if self.text_dim > 0:
            if words is None or word_mask is None:
                raise ConfigError("SVLA was built with a language branch: pass words and word_mask")
            att = att + self.language_branch(v_pre, words, word_mask)
        return self.mix(att) * v


class ConvFeedForward(nn.Sequential):
    """FeedForward of Eq. 3: 1x1 conv, 3x3 depthwise conv, GELU, 1x1 conv (SegNeXt/MSCAN style)."""

    def __init__(self, channels: int, ratio: float) -> None:
        hidden = int(channels * ratio)
        super().__init__(
            nn.Conv2d(channels, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1),
        )


class SVLAEncoderBlock(nn.Module):
    """Encoder block (Eq. 2-3): ``F' = Norm(SVLA(V, L) + V)``, ``F = Norm(FFN(F') + F')``, batch norms."""

    def __init__(self, channels: int, text_dim: int, mlp_ratio: float = 4.0,
                 kernel_sizes: tuple[int, ...] = (7, 11, 21)) -> None:
        super().__init__()
        self.attn = ScaleAwareVLAttention(channels, text_dim, kernel_sizes)
        self.norm1 = nn.BatchNorm2d(channels)
        self.ffn = ConvFeedForward(channels, mlp_ratio)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, v: Tensor, words: Tensor | None = None, word_mask: Tensor | None = None) -> Tensor:
        f = self.norm1(self.attn(v, words, word_mask) + v)
        return self.norm2(self.ffn(f) + f)


class LanguageGuidedVisionEncoder(nn.Module):
    """Four-stage LSMS encoder (Eq. 1, Table I): an image stem to H/4, then stages of SVLA blocks.

    The stem is two stride-2 3x3 conv + BN layers (GELU between), as SegNeXt's MSCAN; stages 2-4 start
    with a stride-2 3x3 conv + BN. Returns the four feature maps ``F_1..F_4`` at H/4 ... H/32.
    """

    def __init__(self, in_channels: int = 3, text_dim: int = 768, dims: tuple[int, ...] = (64, 128, 320, 512),
                 depths: tuple[int, ...] = (3, 3, 5, 2), mlp_ratios: tuple[float, ...] = (2.0, 2.0, 2.0, 2.0),
                 kernel_sizes: tuple[int, ...] = (7, 11, 21)) -> None:
        super().__init__()
        if not len(dims) == len(depths) == len(mlp_ratios):
            raise ConfigError(f"dims, depths and mlp_ratios must have the same length, got {dims}, {depths}, {mlp_ratios}")
        self.dims = tuple(dims)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, dims[0] // 2, 3, stride=2, padding=1), nn.BatchNorm2d(dims[0] // 2), nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1), nn.BatchNorm2d(dims[0]),
        )
        # down-sampling of Eq. 1: stride-2 3x3 conv + BN
        self.downs = nn.ModuleList(ConvNormAct(dims[i - 1], dims[i], 3, stride=2, bias=True, act=None)
                                   for i in range(1, len(dims)))
        self.stages = nn.ModuleList(
            nn.ModuleList(SVLAEncoderBlock(dim, text_dim, ratio, kernel_sizes) for _ in range(depth))
            for dim, depth, ratio in zip(dims, depths, mlp_ratios)
        )

    @property
    def output_stride(self) -> int:
        """Stride of the deepest map (4 for the stem, 2 per later stage); input sides must be multiples of it."""
        return 4 * 2 ** len(self.downs)

    def forward(self, image: Tensor, words: Tensor | None = None, word_mask: Tensor | None = None) -> list[Tensor]:
        x = self.stem(image)
        features = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downs[i - 1](x)
            for block in stage:
                x = block(x, words, word_mask)
            features.append(x)
        return features
