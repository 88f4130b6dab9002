"""Image-only baseline: any segmentation-models-pytorch architecture, text ignored."""
from __future__ import annotations

import math
from typing import Any

import segmentation_models_pytorch as smp
from torch import Tensor, nn

from langseg.blocks.text_encoder import TextFeatures
from langseg.errors import ConfigError
from langseg.models.base import LanguageGuidedSegmenter
from langseg.registry import register_model, register_variant


class SMPNet(nn.Module):
    """``smp.<arch>(encoder_name, ...)`` with one output channel: ``net(image, text) -> {"logits"}``, text unused.

    ``arch`` is any smp architecture (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, PSPNet, ...);
    ``decoder_channels`` applies to the U-Net family only; ``encoder_depth`` None keeps the architecture's
    own (PSPNet: 3, most others: 5). ``encoder_weights`` is None by default since nothing is downloaded.
    ``head_prior``: the head's last convolution starts with weights ~N(0, 0.01²) and the bias ``log(p / (1 - p))``,
    so every seed starts predicting about the foreground fraction ``p`` everywhere (the prior init of Lin et al.,
    Focal Loss, ICCV 2017); None keeps smp's random init, whose mean logit varies with the seed.
    """

    def __init__(self, in_channels: int = 1, arch: str = "Unet", encoder_name: str = "resnet18",
                 encoder_weights: str | None = None, encoder_depth: int | None = None,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16), head_prior: float | None = None) -> None:
        super().__init__()
        extra: dict[str, Any] = {"decoder_channels": list(decoder_channels)} if arch.lower().startswith("unet") else {}
        if encoder_depth is not None:
            extra["encoder_depth"] = encoder_depth
        self.model = smp.create_model(arch, encoder_name=encoder_name, encoder_weights=encoder_weights,
                                      in_channels=in_channels, classes=1, **extra)
        if head_prior is not None:
            if not 0.0 < head_prior < 1.0:
                raise ConfigError(f"head_prior is a foreground fraction in (0, 1), got {head_prior}")
            conv = next(m for m in self.model.segmentation_head.modules() if isinstance(m, nn.Conv2d))
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, math.log(head_prior / (1 - head_prior)))

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
