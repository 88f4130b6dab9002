"""Image-only baseline: any segmentation-models-pytorch architecture, text ignored."""
from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import Tensor

from langseg.blocks.text_encoder import TextFeatures
from langseg.models.base import LanguageGuidedSegmenter
from langseg.registry import register_model


@register_model("unet")
class UNetBaseline(LanguageGuidedSegmenter):
    """The reference every method is compared against: ``smp.<arch>(encoder_name, ...)`` on the image alone.

    ``arch`` is any smp architecture (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, ...); ``encoder_weights``
    is None by default since nothing is downloaded.
    """

    def __init__(self, in_channels: int = 1, arch: str = "Unet", encoder_name: str = "resnet18",
                 encoder_weights: str | None = None, encoder_depth: int = 5,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16), dice_weight: float = 1.0,
                 bce_weight: float = 1.0, threshold: float = 0.5, lr: float = 1e-3, weight_decay: float = 1e-2) -> None:
        super().__init__(in_channels=in_channels, use_text=False, dice_weight=dice_weight, bce_weight=bce_weight,
                         threshold=threshold, lr=lr, weight_decay=weight_decay)
        extra = {"decoder_channels": list(decoder_channels)} if arch.lower().startswith("unet") else {}
        self.size_divisor = 2**encoder_depth
        self.net = smp.create_model(arch, encoder_name=encoder_name, encoder_weights=encoder_weights,
                                    encoder_depth=encoder_depth, in_channels=in_channels, classes=1, **extra)

    def forward(self, image: Tensor, text: TextFeatures | None = None) -> Tensor:
        return self.net(image)
