"""GuideDecoder blocks (Zhong et al., MICCAI 2023): text token projection, guide layer, up-block, sub-pixel head."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from langseg.blocks.layers import ConvNormAct, sine_position_encoding_1d
from langseg.errors import ConfigError

GUIDE_SCALE_INIT = 1.421


class TextTokenProjection(nn.Module):
    """Text to the guide layer's tokens: a 1x1 Conv1d over ``in_tokens`` -> ``out_tokens``, GELU, Linear, LeakyReLU.

    Padding words are zeroed first, so their content never reaches the projected tokens; with ``mask_padding=False``
    they enter the Conv1d as they come, as in the official code. ``norm`` (not in the paper) ends with a LayerNorm, so
    the projected words have unit scale whatever the text encoder's: without it, a 384-d MiniLM's words come out at
    about 0.1, several times smaller than the sine position code the guide layer adds to them as keys, and the
    cross-attention then picks words by position more than by content.
    """

    def __init__(self, text_dim: int, channels: int, in_tokens: int, out_tokens: int, mask_padding: bool = True,
                 norm: bool = False) -> None:
        super().__init__()
        self.in_tokens = in_tokens
        self.mask_padding = mask_padding
        self.tokens = nn.Sequential(nn.Conv1d(in_tokens, out_tokens, 1), nn.GELU())
        self.channels = nn.Sequential(nn.Linear(text_dim, channels), nn.LeakyReLU(),
                                      *([nn.LayerNorm(channels)] if norm else []))

    def forward(self, text: Tensor, mask: Tensor) -> Tensor:
        if text.shape[1] != self.in_tokens:
            raise ConfigError(f"the text projection expects {self.in_tokens} tokens, got {text.shape[1]}: "
                             "encode text with padding='max_length' and the same max_text_length")
        if self.mask_padding:
            text = text * mask.unsqueeze(-1).to(text.dtype)
        return self.channels(self.tokens(text))  # (B, T, Ct) -> (B, L, C)


class PositionalSelfAttention(nn.Module):
    """Self-attention on pre-normalised visual tokens with sine PE on Q and K only, then LayerNorm (the update)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm_out = nn.LayerNorm(channels)

    def forward(self, vis: Tensor, pos: Tensor) -> Tensor:
        x = self.norm_in(vis)
        return self.norm_out(self.attn(x + pos, x + pos, x, need_weights=False)[0])


class PositionalCrossAttention(nn.Module):
    """Vision -> text attention: Q = norm(vis) + PE, K = text + PE, V = text, padded words masked; then LayerNorm."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm_out = nn.LayerNorm(channels)

    def forward(self, vis: Tensor, vis_pos: Tensor, text: Tensor, text_pos: Tensor,
                text_mask: Tensor | None = None) -> Tensor:
        padding = None if text_mask is None else ~text_mask
        out = self.attn(self.norm_in(vis) + vis_pos, text + text_pos, text, key_padding_mask=padding,
                        need_weights=False)[0]
        return self.norm_out(out)


def flatten_tokens(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, C, H, W) -> (B, H*W, C)`` tokens and their ``(1, H*W, C)`` sine position encoding."""
    _, c, h, w = x.shape
    return x.flatten(2).transpose(1, 2), sine_position_encoding_1d(h * w, c, x.device, x.dtype).unsqueeze(0)


class GuideLayer(nn.Module):
    """Guide layer: visual self-attention, then cross-attention to the projected text with a learnable residual scale.

    ``text_tokens`` (in, out) sets the Conv1d token projection (fixed token count); with None, the
    words are only projected in width and the cross-attention masks padded words. ``text_norm``: a LayerNorm
    after the text projection (``TextTokenProjection``).
    """

    def __init__(self, channels: int, text_dim: int, text_tokens: tuple[int, int] | None, self_heads: int = 1,
                 cross_heads: int = 4, mask_padding: bool = True, text_norm: bool = False) -> None:
        super().__init__()
        self.text_proj: nn.Module
        if text_tokens is None:
            self.text_proj = nn.Sequential(nn.Linear(text_dim, channels), nn.LeakyReLU(),
                                           *([nn.LayerNorm(channels)] if text_norm else []))
        else:
            self.text_proj = TextTokenProjection(text_dim, channels, *text_tokens, mask_padding=mask_padding,
                                                 norm=text_norm)
        self.self_attn = PositionalSelfAttention(channels, self_heads)
        self.cross_attn = PositionalCrossAttention(channels, cross_heads)
        self.scale = nn.Parameter(torch.tensor(GUIDE_SCALE_INIT))

    def project_text(self, text: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Projected text ``(B, L, C)`` and the key padding mask to use (None once tokens are mixed)."""
        if isinstance(self.text_proj, TextTokenProjection):
            return self.text_proj(text, mask), None
        return self.text_proj(text), mask

    def forward(self, vis: Tensor, text: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = vis.shape
        txt, txt_mask = self.project_text(text, mask)
        x, pos = flatten_tokens(vis)
        txt_pos = sine_position_encoding_1d(txt.shape[1], c, vis.device, vis.dtype).unsqueeze(0)
        x = x + self.self_attn(x, pos)
        x = x + self.scale * self.cross_attn(x, pos, txt, txt_pos, txt_mask)
        return x.transpose(1, 2).reshape(b, c, h, w)


class UpBlock(nn.Module):
    """Decoder up-block: 2x2 transposed conv, concat the skip, ``num_convs`` 3x3 conv-BN-activation.

    The defaults are GuideDecoder's (no biases, two convs, LeakyReLU 0.01); MMI-UNet's
    decoder is ``num_convs=1, bias=True, act=nn.ReLU``.
    """

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int | None = None, num_convs: int = 2,
                 bias: bool = False, act: Callable[[], nn.Module] = partial(nn.LeakyReLU, 0.01, inplace=True)) -> None:
        super().__init__()
        skip_channels = out_channels if skip_channels is None else skip_channels
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=bias)
        widths = [out_channels + skip_channels] + [out_channels] * (num_convs - 1)
        self.convs = nn.Sequential(*(ConvNormAct(width, out_channels, bias=bias, act=act) for width in widths))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1))


def icnr_(conv: nn.Conv2d, scale: int) -> None:
    """ICNR init (Aitken et al., 2017) of a conv before a x``scale`` pixel shuffle: each group of ``scale^2`` output
    channels shares one Kaiming-normal kernel, so the shuffled output starts as a nearest-neighbour upsampling."""
    out_channels, *rest = conv.weight.shape
    kernel = torch.empty(out_channels // scale**2, *rest)
    nn.init.kaiming_normal_(kernel)
    with torch.no_grad():
        conv.weight.copy_(kernel.repeat_interleave(scale**2, dim=0))


class SubpixelHead(nn.Module):
    """Sub-pixel upsampling head: 3x3 conv to ``r^2 * mid`` channels, pixel shuffle x``r``, blur, 1x1 conv to logits.

    The blur pads ``r - 1`` rows and columns at the top and left, then averages ``r x r`` windows, removing the
    checkerboard of the shuffle. ``style="langseg"`` pads by replication (no dark border) with the default init;
    ``style="monai"`` is MONAI's ``SubpixelUpsample``, which the official GuideDecoder/HiMix use: zero padding and
    ICNR init.
    """

    def __init__(self, in_channels: int, mid_channels: int = 24, scale: int = 4, out_channels: int = 1,
                 style: Literal["langseg", "monai"] = "langseg") -> None:
        super().__init__()
        if style not in ("langseg", "monai"):
            raise ConfigError(f"subpixel style must be 'langseg' or 'monai', got {style!r}")
        self.shuffle = nn.Sequential(nn.Conv2d(in_channels, mid_channels * scale**2, 3, padding=1),
                                     nn.PixelShuffle(scale))
        pad = (scale - 1, 0, scale - 1, 0)
        self.blur = nn.Sequential(nn.ReplicationPad2d(pad) if style == "langseg" else nn.ZeroPad2d(pad),
                                  nn.AvgPool2d(scale, stride=1))
        if style == "monai":
            icnr_(self.shuffle[0], scale)
        self.out = nn.Conv2d(mid_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blur(self.shuffle(x)))  # (B, C, h, w) -> (B, 1, r*h, r*w)
