"""MMI-UNet (Bui et al., "Visual-Textual Matching Attention for Lesion Segmentation in Chest Images", MICCAI 2024).

A timm ConvNeXt encoder with a vision-text Bridger (the paper's ITM module) after every stage, a text-free decoder.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from timm.models import FeatureListNet
from torch import Tensor, nn

from langseg.blocks.augmentation import random_zoom
from langseg.blocks.bridger import Bridger
from langseg.blocks.guide import SubpixelHead, UpBlock
from langseg.blocks.layers import INPLACE_RELU
from langseg.blocks.text_encoder import TextFeatures
from langseg.errors import ConfigError
from langseg.models.base import LanguageGuidedSegmenter, adamw
from langseg.models.guidedecoder import create_feature_encoder
from langseg.registry import register_model, register_variant


class MMIUNetNet(nn.Module):
    """Image encoder (timm, 4 stages) with a ``Bridger`` after each stage -> 3 up-blocks -> sub-pixel head.

    After stage ``i`` the Bridger updates the map and the words. The updated map is the decoder's skip
    feature (the coarsest one is the decoder's input) and is added to the stage output that enters stage
    ``i + 1``. Bridger 1 reads the text encoder's last hidden state; Bridger ``i + 1`` reads that state
    plus Bridger ``i``'s text output. The decoder reads no text. A 1-channel image is repeated to 3
    channels for the backbone.

    ``last_bridger_text`` keeps the text branch of the last Bridger, whose output nothing reads: the
    official code has it (5.5 M parameters with ConvNeXt-T and 768-d text, never trained); False drops it,
    which distributed training without ``find_unused_parameters`` needs. ``mask_padding`` hides padded
    words from the Bridgers' attention (the official code attends to them).
    """

    def __init__(self, in_channels: int = 1, text_dim: int = 384, encoder_name: str = "convnext_tiny",
                 encoder_checkpoint: str | None = None, heads: int = 8, ffn_dim: int = 128, dropout: float = 0.1,
                 head_channels: int = 24, mask_padding: bool = False, last_bridger_text: bool = True,
                 encoder_weights: str | None = None) -> None:
        super().__init__()
        self.mask_padding = mask_padding
        self.encoder_in_channels = 3 if in_channels == 1 else in_channels
        self.encoder = create_feature_encoder(encoder_name, self.encoder_in_channels, encoder_checkpoint,
                                              encoder_weights)
        if not isinstance(self.encoder, FeatureListNet):
            raise ConfigError(f"timm encoder '{encoder_name}' has no sequential feature stages to insert Bridgers "
                              f"between; use a convolutional backbone such as convnext_tiny or resnet18")
        channels = self.encoder.feature_info.channels()  # fine to coarse, e.g. 96, 192, 384, 768
        self.bridgers = nn.ModuleList(
            Bridger(c, text_dim, heads=heads, ffn_dim=ffn_dim, dropout=dropout,
                    update_text=last_bridger_text or i < len(channels) - 1) for i, c in enumerate(channels))
        self.decoder = nn.ModuleList(UpBlock(channels[3 - i], channels[2 - i], num_convs=1, bias=True, act=INPLACE_RELU)
                                     for i in range(3))
        self.head = SubpixelHead(channels[0], head_channels, scale=self.encoder.feature_info.reduction()[0])

    @property
    def output_stride(self) -> int:
        return self.encoder.feature_info.reduction()[-1]

    def encode(self, image: Tensor, text: TextFeatures) -> list[Tensor]:
        """The Bridger outputs of the four stages, fine to coarse: the paper's encoder with its ITM blocks."""
        mask = text.mask if self.mask_padding else None
        skips: list[Tensor] = []
        carried: Tensor | None = None  # the previous Bridger's text
        bridgers = iter(self.bridgers)
        x = image
        for name, module in self.encoder.items():
            x = module(x)
            if name in self.encoder.return_layers:
                words = text.tokens if carried is None else text.tokens + carried
                vis, carried = next(bridgers)(x, words, mask)
                skips.append(vis)
                x = x + vis
        return skips

    def forward(self, image: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        if text is None:
            raise ConfigError(f"{type(self).__name__} needs text features")
        if image.shape[1] != self.encoder_in_channels:
            image = image.expand(-1, self.encoder_in_channels, -1, -1)  # grayscale -> 3 channels
        skips = self.encode(image, text)
        x = skips[-1]
        for i, up in enumerate(self.decoder):
            x = up(x, skips[2 - i])
        logits = self.head(x)
        if logits.shape[-2:] != image.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits}


@register_model("mmi_unet")
class MMIUNet(LanguageGuidedSegmenter):
    """MMI-UNet: an ``MMIUNetNet`` trained with Dice + BCE; official recipe AdamW at 3e-4 with cosine annealing
    (200 epochs, to 1e-6) and a random zoom (0.95-1.2, p=0.1). Text is padded to ``max_text_length`` tokens.
    Image-encoder weights: ``encoder_checkpoint`` (a timm checkpoint file) or ``encoder_weights`` (a Hugging Face
    ConvNeXt folder such as ``facebook/convnext-tiny-224``, or its weights file), as for GuideDecoder."""

    paper = 'Bui et al., MMI-UNet (official code: nguyenpbui/MMI-UNet)'

    text_padding: Literal["longest", "max_length"] = "max_length"
    requires_text = True

    def __init__(self, encoder_name: str = "convnext_tiny", encoder_checkpoint: str | None = None, heads: int = 8,
                 ffn_dim: int = 128, dropout: float = 0.1, head_channels: int = 24, mask_padding: bool = False,
                 last_bridger_text: bool = True, max_text_length: int = 24, encoder_weights: str | None = None,
                 optimizer: OptimizerCallable = lambda params: torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-2),
                 **kwargs: Any) -> None:
        super().__init__(max_text_length=max_text_length, optimizer=optimizer, **kwargs)
        self.net = MMIUNetNet(self.in_channels, self.text_dim, encoder_name, encoder_checkpoint, heads, ffn_dim,
                              dropout, head_channels, mask_padding, last_bridger_text, encoder_weights)

    def default_lr_scheduler(self) -> LRSchedulerCallable:
        """Cosine annealing over 200 epochs to 1e-6."""
        return partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=200, eta_min=1e-6)

    def default_augmentation(self) -> nn.Module:
        """The official random zoom (0.95-1.2, p 0.1) of image and mask; no flip, so the text's sides stay true."""
        return random_zoom()


register_variant("mmi_unet_small", MMIUNet, "MMI-UNet on ConvNeXt-Atto, AdamW at 1e-3, no schedule: "
                 "configs/mmi_unet.yaml.", encoder_name="convnext_atto", optimizer=adamw(1e-3), lr_scheduler=None)
