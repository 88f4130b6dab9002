"""Text-to-pseudo-image generator of early text-image fusion (arXiv 2510.12482, Sec. "Generator")."""
from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from langseg.errors import ConfigError


class TextToPseudoImage(nn.Module):
    """Sentence embedding -> Linear -> 1x28x28 -> 3 stride-2 ConvTranspose2d (16, 8, C) -> Sigmoid: C x 224 x 224.

    The paper's generator; the 224 x 224 output is resized (bilinear) to the image's size so it can be
    concatenated with the image along channels. ReLU sits between the transposed convolutions.

    ``init="torch"`` keeps PyTorch's default initialisation, whose transposed convolutions take their fan-in from
    the *output* channels: from one input channel the first one shrinks the text's variation about 15-fold, and
    at initialisation the pseudo-images of different texts differ by about 1e-4 of the image's scale.
    ``init="fan_in"`` draws every weight from a normal of std ``gain / sqrt(fan_in)``, with the fan-in a
    transposed convolution really has (input channels x (kernel / stride)^2 taps per output pixel), gain
    sqrt(2) before a ReLU and 1 elsewhere, and zero biases, so the text's variation keeps its scale down to the
    Sigmoid.
    """

    def __init__(self, text_dim: int, out_channels: int = 1, base_size: int = 28,
                 channels: tuple[int, int] = (16, 8), init: Literal["torch", "fan_in"] = "torch") -> None:
        super().__init__()
        self.base_size = base_size
        self.project = nn.Linear(text_dim, base_size * base_size)
        widths = (1, *channels, out_channels)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1))  # doubles H and W
            layers.append(nn.ReLU(inplace=True) if i < len(widths) - 2 else nn.Sigmoid())
        self.upsample = nn.Sequential(*layers)
        if init == "fan_in":
            self._init_fan_in()
        elif init != "torch":
            raise ConfigError(f"generator init must be 'torch' or 'fan_in', got {init!r}")

    def _init_fan_in(self) -> None:
        nn.init.normal_(self.project.weight, std=1.0 / math.sqrt(self.project.in_features))
        nn.init.zeros_(self.project.bias)
        convs = [m for m in self.upsample if isinstance(m, nn.ConvTranspose2d)]
        for i, conv in enumerate(convs):
            fan_in = conv.in_channels * (conv.kernel_size[0] // conv.stride[0]) ** 2
            gain = math.sqrt(2.0) if i < len(convs) - 1 else 1.0
            nn.init.normal_(conv.weight, std=gain / math.sqrt(fan_in))
            nn.init.zeros_(conv.bias)

    @property
    def native_size(self) -> int:
        """Side of the generated image before resizing (224 for the paper's 28 x 28 start)."""
        return self.base_size * 8

    def forward(self, sentence: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """``(B, D)`` sentence embeddings -> ``(B, C, *size)`` pseudo-images in [0, 1] (native size if None)."""
        grid = self.project(sentence).view(-1, 1, self.base_size, self.base_size)  # (B, 1, 28, 28)
        pseudo = self.upsample(grid)  # (B, C, 224, 224)
        if size is not None and tuple(size) != tuple(pseudo.shape[-2:]):
            # antialiased resize has no bf16 kernel on CPU: resize in fp32
            pseudo = F.interpolate(pseudo.float(), size=tuple(size), mode="bilinear", align_corners=False,
                                   antialias=True).to(pseudo.dtype)
        return pseudo
