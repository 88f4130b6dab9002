"""GuideDecoder (Zhong et al., "Ariadne's Thread", MICCAI 2023): a timm ConvNeXt encoder and a text-guided decoder."""
from __future__ import annotations

from functools import partial
from typing import Any, Literal

import timm
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from langseg.blocks.guide import GuideLayer, SubpixelHead, UpBlock
from langseg.blocks.text_encoder import TextFeatures
from langseg.errors import ConfigError
from langseg.models.base import LanguageGuidedSegmenter, adamw
from langseg.registry import register_model, register_variant
from langseg.weights import load_hf_convnext


def create_feature_encoder(encoder_name: str, in_channels: int, encoder_checkpoint: str | None,
                           encoder_weights: str | None = None) -> nn.Module:
    """The last four feature stages of any timm backbone; weights from a local timm checkpoint file
    (``encoder_checkpoint``) or a Hugging Face ConvNeXt folder or weights file (``encoder_weights``)."""
    if encoder_checkpoint is not None and encoder_weights is not None:
        raise ConfigError("pass encoder_checkpoint (a timm file) or encoder_weights (a Hugging Face ConvNeXt "
                          "folder or file), not both")
    kwargs = {"pretrained": encoder_checkpoint is not None}
    if encoder_checkpoint is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": encoder_checkpoint}
    try:
        encoder = timm.create_model(encoder_name, features_only=True, out_indices=(-4, -3, -2, -1),
                                    in_chans=in_channels, **kwargs)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"timm encoder '{encoder_name}' (checkpoint {encoder_checkpoint}) cannot be built with "
                          f"four feature stages: {err}") from err
    if encoder_weights is not None:
        if not encoder_name.startswith("convnext"):
            raise ConfigError(f"encoder_weights takes Hugging Face ConvNeXt weights; encoder_name is {encoder_name}")
        load_hf_convnext(encoder, encoder_weights)
    return encoder


class GuideDecoderNet(nn.Module):
    """Image encoder (timm, 4 stages) -> 3 decoder stages, each a guide layer then an up-block -> sub-pixel head.

    The guide layers' Conv1d over tokens needs a fixed count of ``max_text_length`` tokens; stage ``i``
    projects them to ``text_tokens[i]`` tokens (24, 12, 9 in the paper). A 1-channel image is repeated
    to 3 channels for the backbone, as the paper does for its ImageNet weights. ``encoder_weights``: a Hugging
    Face ConvNeXt folder or weights file (``facebook/convnext-tiny-224``, what the official code loads).
    ``subpixel``: the head's padding and init, langseg's or MONAI's (the official code's; ``SubpixelHead``).
    """

    def __init__(self, in_channels: int = 1, text_dim: int = 384, encoder_name: str = "convnext_tiny",
                 encoder_checkpoint: str | None = None, max_text_length: int = 24,
                 text_tokens: tuple[int, int, int] = (24, 12, 9), head_channels: int = 24,
                 encoder_weights: str | None = None, subpixel: Literal["langseg", "monai"] = "langseg",
                 **guide_args: Any) -> None:
        super().__init__()
        if len(text_tokens) != 3:
            raise ConfigError(f"text_tokens needs one token count per decoder stage (3), got {list(text_tokens)}")
        self.text_dim = text_dim
        self.encoder_in_channels = 3 if in_channels == 1 else in_channels
        self.encoder = create_feature_encoder(encoder_name, self.encoder_in_channels, encoder_checkpoint,
                                              encoder_weights)
        channels = self.encoder.feature_info.channels()  # fine to coarse, e.g. 96, 192, 384, 768
        reduction = self.encoder.feature_info.reduction()[0]
        self.guides = nn.ModuleList(self.build_guide(channels[3 - i], (max_text_length, text_tokens[i]), **guide_args)
                                    for i in range(3))
        self.ups = nn.ModuleList(UpBlock(channels[3 - i], channels[2 - i]) for i in range(3))
        self.head = SubpixelHead(channels[0], head_channels, scale=reduction, style=subpixel)

    @property
    def output_stride(self) -> int:
        return self.encoder.feature_info.reduction()[-1]

    def build_guide(self, channels: int, text_tokens: tuple[int, int], self_heads: int = 1,
                    cross_heads: int = 4, mask_text_padding: bool = True, text_norm: bool = False) -> nn.Module:
        """The guide layer of one decoder stage."""
        return GuideLayer(channels, self.text_dim, text_tokens, self_heads, cross_heads, mask_text_padding, text_norm)

    def stage_texts(self, text: TextFeatures) -> list[Tensor]:
        """The text features each decoder stage reads, coarsest first: the last hidden state for all."""
        return [text.tokens] * 3

    def forward(self, image: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        if text is None:
            raise ConfigError(f"{type(self).__name__} needs text features")
        if image.shape[1] != self.encoder_in_channels:
            image = image.expand(-1, self.encoder_in_channels, -1, -1)  # grayscale -> 3 channels
        feats = self.encoder(image)  # fine to coarse
        x = feats[-1]
        for i, (guide, up, words) in enumerate(zip(self.guides, self.ups, self.stage_texts(text))):
            x = up(guide(x, words, text.mask), feats[2 - i])
        logits = self.head(x)
        if logits.shape[-2:] != image.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits}


@register_model("guidedecoder")
class GuideDecoder(LanguageGuidedSegmenter):
    """GuideDecoder: a ``GuideDecoderNet`` trained with Dice + BCE; paper recipe AdamW at 3e-4 with cosine
    annealing (200 epochs, to 1e-6). Text is padded to ``max_text_length`` tokens.

    ``mask_text_padding=False`` feeds the padded words' features to the token projection, as the official code
    does (True zeroes them). ``text_norm`` (not in the paper; on in the quick config) ends every guide layer's text
    projection with a LayerNorm, so that the words' content, not the position code added to them, steers the
    cross-attention (``TextTokenProjection``). Image-encoder weights: ``encoder_checkpoint`` (a timm checkpoint
    file) or ``encoder_weights`` (a Hugging Face ConvNeXt folder such as ``facebook/convnext-tiny-224``, or its
    ``model.safetensors``/``pytorch_model.bin``).
    """

    paper = "Zhong et al., Ariadne's Thread: Using Text Prompts to Improve Segmentation of Infected Areas from Chest X-ray Images (MICCAI 2023)"

    text_padding: Literal["longest", "max_length"] = "max_length"
    requires_text = True

    def __init__(self, encoder_name: str = "convnext_tiny", encoder_checkpoint: str | None = None,
                 encoder_weights: str | None = None,
                 text_tokens: tuple[int, int, int] = (24, 12, 9), self_heads: int = 1, cross_heads: int = 4,
                 head_channels: int = 24, subpixel: Literal["langseg", "monai"] = "langseg",
                 mask_text_padding: bool = True, max_text_length: int = 24, text_norm: bool = False,
                 optimizer: OptimizerCallable = lambda params: torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-2),
                 **kwargs: Any) -> None:
        super().__init__(max_text_length=max_text_length, optimizer=optimizer, **kwargs)
        self.net = GuideDecoderNet(self.in_channels, self.text_dim, encoder_name, encoder_checkpoint, max_text_length,
                                   text_tokens, head_channels, encoder_weights, subpixel, self_heads=self_heads,
                                   cross_heads=cross_heads, mask_text_padding=mask_text_padding, text_norm=text_norm)
        self.text_encoder.zero_padding = mask_text_padding  # False: the padded words' features, as encoded

    def default_lr_scheduler(self) -> LRSchedulerCallable:
        """Cosine annealing over 200 epochs to 1e-6."""
        return partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=200, eta_min=1e-6)


register_variant("guidedecoder_small", GuideDecoder, "GuideDecoder on ConvNeXt-Atto with text_norm and 8 cross-attention "
                 "heads, AdamW at 1e-3 with a cosine decay over 4 epochs: configs/guidedecoder.yaml.",
                 encoder_name="convnext_atto", text_norm=True, cross_heads=8, optimizer=adamw(1e-3),
                 lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4))
