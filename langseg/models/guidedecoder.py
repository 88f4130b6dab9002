"""GuideDecoder (Zhong et al., "Ariadne's Thread", MICCAI 2023): a timm ConvNeXt encoder and a text-guided decoder."""
from __future__ import annotations

from typing import Literal

import timm
from torch import Tensor, nn

from langseg.blocks.guide import GuideLayer, SubpixelHead, UpBlock
from langseg.blocks.text_encoder import TextFeatures
from langseg.errors import ConfigError
from langseg.models.base import LanguageGuidedSegmenter
from langseg.registry import register_model


def create_feature_encoder(encoder_name: str, in_channels: int, encoder_checkpoint: str | None) -> nn.Module:
    """The last four feature stages of any timm backbone; weights from a local checkpoint file when given."""
    kwargs = {"pretrained": encoder_checkpoint is not None}
    if encoder_checkpoint is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": encoder_checkpoint}
    try:
        return timm.create_model(encoder_name, features_only=True, out_indices=(-4, -3, -2, -1),
                                 in_chans=in_channels, **kwargs)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"timm encoder '{encoder_name}' (checkpoint {encoder_checkpoint}) cannot be built with "
                          f"four feature stages: {err}") from err


@register_model("guidedecoder")
class GuideDecoder(LanguageGuidedSegmenter):
    """Image encoder (timm, 4 stages) -> 3 decoder stages, each a guide layer then an up-block -> sub-pixel head.

    The guide layers' Conv1d over tokens needs a fixed count, so text is padded to ``max_text_length``;
    stage ``i`` projects it to ``text_tokens[i]`` tokens (24, 12, 9 in the paper). A 1-channel image is
    repeated to 3 channels for the backbone, as the paper does for its ImageNet weights.
    """

    text_padding: Literal["longest", "max_length"] = "max_length"

    size_divisor = 32

    def __init__(self, in_channels: int = 1, encoder_name: str = "convnext_tiny", encoder_checkpoint: str | None = None,
                 text_encoder: str = "minilm", freeze_text_encoder: bool = True, max_text_length: int = 24,
                 text_tokens: tuple[int, int, int] = (24, 12, 9), self_heads: int = 1, cross_heads: int = 4,
                 head_channels: int = 24, dice_weight: float = 1.0, bce_weight: float = 1.0, threshold: float = 0.5,
                 lr: float = 3e-4, weight_decay: float = 1e-2) -> None:
        super().__init__(in_channels=in_channels, use_text=True, text_encoder=text_encoder,
                         freeze_text_encoder=freeze_text_encoder, max_text_length=max_text_length,
                         dice_weight=dice_weight, bce_weight=bce_weight, threshold=threshold, lr=lr,
                         weight_decay=weight_decay)
        if len(text_tokens) != 3:
            raise ConfigError(f"text_tokens needs one token count per decoder stage (3), got {list(text_tokens)}")
        self.encoder_in_channels = 3 if in_channels == 1 else in_channels
        self.encoder = create_feature_encoder(encoder_name, self.encoder_in_channels, encoder_checkpoint)
        channels = self.encoder.feature_info.channels()  # fine to coarse, e.g. 96, 192, 384, 768
        reduction = self.encoder.feature_info.reduction()[0]
        self.text_tokens = tuple(text_tokens)
        self.guides = nn.ModuleList(self.build_guide(i, channels[3 - i], (max_text_length, text_tokens[i]),
                                                     self_heads=self_heads, cross_heads=cross_heads)
                                    for i in range(3))
        self.ups = nn.ModuleList(UpBlock(channels[3 - i], channels[2 - i]) for i in range(3))
        self.head = SubpixelHead(channels[0], head_channels, scale=reduction)

    def build_guide(self, stage: int, channels: int, text_tokens: tuple[int, int], self_heads: int,
                    cross_heads: int) -> nn.Module:
        """The guide layer of decoder stage ``stage`` (0 = coarsest)."""
        return GuideLayer(channels, self.text_dim, text_tokens, self_heads, cross_heads)

    def stage_texts(self, text: TextFeatures) -> list[Tensor]:
        """The text features each decoder stage reads, coarsest first: the last hidden state for all."""
        return [text.tokens] * 3

    def forward(self, image: Tensor, text: TextFeatures | None) -> Tensor:
        if text is None:
            raise ValueError(f"{type(self).__name__} needs text features")
        if image.shape[1] != self.encoder_in_channels:
            image = image.expand(-1, self.encoder_in_channels, -1, -1)  # grayscale -> 3 channels
        feats = self.encoder(image)  # fine to coarse
        x = feats[-1]
        for i, (guide, up, words) in enumerate(zip(self.guides, self.ups, self.stage_texts(text))):
            x = up(guide(x, words, text.mask), feats[2 - i])
        logits = self.head(x)
        if logits.shape[-2:] != image.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits
