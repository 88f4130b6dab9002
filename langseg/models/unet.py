"""Image-only baseline: any segmentation-models-pytorch architecture, text ignored."""
from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
from torch import Tensor, nn

from langseg.blocks.text_encoder import TextFeatures
from langseg.models.base import LanguageGuidedSegmenter
from langseg.registry import register_model, register_variant


class SMPNet(nn.Module):
    """``smp.<arch>(encoder_name, ...)`` with one output channel: ``net(image, text) -> {"logits"}``, text unused.

    ``arch`` is any smp architecture (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, PSPNet, ...);
    ``decoder_channels`` applies to the U-Net family only; ``encoder_depth`` None keeps the architecture's
    own (PSPNet: 3, most others: 5). ``encoder_weights`` is None by default since nothing is downloaded.
    """

    def __init__(self, in_channels: int = 1, arch: str = "Unet", encoder_name: str = "resnet18",
                 encoder_weights: str | None = None, encoder_depth: int | None = None,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)) -> None:
        super().__init__()
        extra: dict[str, Any] = {"decoder_channels": list(decoder_channels)} if arch.lower().startswith("unet") else {}
        if encoder_depth is not None:
            extra["encoder_depth"] = encoder_depth
        self.model = smp.create_model(arch, encoder_name=encoder_name, encoder_weights=encoder_weights,
                                      in_channels=in_channels, classes=1, **extra)

    @property
    def output_stride(self) -> int:
        """The encoder's total stride (smp's own ``encoder.output_stride``)."""
        return self.model.encoder.output_stride

    def forward(self, image: Tensor, text: TextFeatures | None = None) -> dict[str, Tensor]:
        return {"logits": self.model(image)}


@register_model("unet")
class UNetBaseline(LanguageGuidedSegmenter):
    """The reference every method is compared against: an ``SMPNet`` on the image alone (Dice + BCE)."""

    paper = 'Ronneberger et al., U-Net (MICCAI 2015), via segmentation-models-pytorch'

    def __init__(self, arch: str = "Unet", encoder_name: str = "resnet18", encoder_weights: str | None = None,
                 encoder_depth: int | None = None, decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
                 **kwargs: Any) -> None:
        super().__init__(use_text=False, **kwargs)
        self.hparams.pop("use_text", None)  # fixed, not an option: load_from_checkpoint must not pass it again
        self.net = SMPNet(self.in_channels, arch, encoder_name, encoder_weights, encoder_depth, tuple(decoder_channels))


register_variant("unet_small", UNetBaseline, "The baseline with a narrow decoder (128 .. 8 channels): configs/unet.yaml.",
                 decoder_channels=(128, 64, 32, 16, 8))
