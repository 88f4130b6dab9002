"""Text-to-pseudo-image generator of early text-image fusion (arXiv 2510.12482, Sec. "Generator")."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TextToPseudoImage(nn.Module):
    """Sentence embedding -> Linear -> 1x28x28 -> 3 stride-2 ConvTranspose2d (16, 8, C) -> Sigmoid: C x 224 x 224.

    The paper's generator; the 224 x 224 output is resized (bilinear) to the image's size so it can be
    concatenated with the image along channels. ReLU sits between the transposed convolutions.
    """

    def __init__(self, text_dim: int, out_channels: int = 1, base_size: int = 28,
                 channels: tuple[int, int] = (16, 8)) -> None:
        super().__init__()
        self.base_size = base_size
        self.project = nn.Linear(text_dim, base_size * base_size)
        widths = (1, *channels, out_channels)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1))  # doubles H and W
            layers.append(nn.ReLU(inplace=True) if i < len(widths) - 2 else nn.Sigmoid())
        self.upsample = nn.Sequential(*layers)

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
