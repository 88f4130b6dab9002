"""HiMix (Hwang et al., WACV 2026): GuideDecoder whose stages read layer groups of the text encoder."""
from __future__ import annotations

from functools import partial
from typing import Any, Literal, Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from langseg.blocks.himix import HiMixLayer, LayerGroupMixer
from langseg.blocks.text_encoder import TextFeatures
from langseg.errors import ConfigError
from langseg.models.base import LanguageGuidedSegmenter, adamw
from langseg.models.guidedecoder import GuideDecoderNet
from langseg.registry import register_model, register_variant


class HiMixNet(GuideDecoderNet):
    """GuideDecoderNet with HiMix decoder layers; stage ``i`` reads the mix of one group of text layers.

    ``text_layers`` indexes the encoder's hidden states (0 = embeddings), split into three equal
    consecutive groups, deepest group to the coarsest stage.
    """

    def __init__(self, in_channels: int = 1, text_dim: int = 384, text_layers: Sequence[int] = (1, 2, 3, 4, 5, 6),
                 encoder_name: str = "convnext_tiny", encoder_checkpoint: str | None = None, max_text_length: int = 24,
                 text_tokens: tuple[int, int, int] = (24, 12, 9), head_channels: int = 24, heads: int = 8,
                 sigma: float = 5.0, centred_fft: bool = True, encoder_weights: str | None = None,
                 ffn: Literal["prenorm", "official"] = "prenorm", subpixel: Literal["langseg", "monai"] = "langseg",
                 mask_text_padding: bool = True, text_norm: bool = False) -> None:
        super().__init__(in_channels, text_dim, encoder_name, encoder_checkpoint, max_text_length, text_tokens,
                         head_channels, encoder_weights, subpixel, heads=heads, sigma=sigma, centred_fft=centred_fft,
                         ffn=ffn, mask_text_padding=mask_text_padding, text_norm=text_norm)
        self.mixer = LayerGroupMixer(text_layers, groups=len(self.guides))

    def build_guide(self, channels: int, text_tokens: tuple[int, int], heads: int = 8, sigma: float = 5.0,
                    centred_fft: bool = True, ffn: Literal["prenorm", "official"] = "prenorm",
                    mask_text_padding: bool = True, text_norm: bool = False) -> nn.Module:
        return HiMixLayer(channels, self.text_dim, text_tokens, heads=heads, sigma=sigma, centred_fft=centred_fft,
                          ffn=ffn, mask_padding=mask_text_padding, text_norm=text_norm)

    def stage_texts(self, text: TextFeatures) -> list[Tensor]:
        if text.hidden_states is None:
            raise ConfigError("HiMix needs every hidden state of the text encoder (text_hidden_states=True)")
        return self.mixer(text.hidden_states)


@register_model("himix")
class HiMix(LanguageGuidedSegmenter):
    """HiMix: a ``HiMixNet`` trained with Dice + BCE, the GuideDecoder recipe (AdamW 3e-4, cosine over 200 epochs).

    ``text_layers`` None reads every transformer layer ``1..N`` of the text encoder (N a multiple of 3).
    Image-encoder weights as GuideDecoder's (``encoder_checkpoint``: timm file; ``encoder_weights``: Hugging Face).
    ``centred_fft``, ``ffn``, ``subpixel`` and ``mask_text_padding`` choose between langseg's choices and the
    official code's (``HiMixLayer``, ``SubpixelHead``, ``GuideDecoder``); ``text_norm`` (not in the paper) is
    GuideDecoder's LayerNorm after the text projection.
    """

    paper = 'Sim et al., HiMix: Hierarchical Visual-Textual Mixing Network for Lesion Segmentation (WACV 2026)'

    text_padding: Literal["longest", "max_length"] = "max_length"
    text_hidden_states = True
    requires_text = True

    def __init__(self, encoder_name: str = "convnext_tiny", encoder_checkpoint: str | None = None,
                 encoder_weights: str | None = None,
                 text_tokens: tuple[int, int, int] = (24, 12, 9), text_layers: Sequence[int] | None = None,
                 heads: int = 8, sigma: float = 5.0, centred_fft: bool = True,
                 ffn: Literal["prenorm", "official"] = "prenorm", head_channels: int = 24,
                 subpixel: Literal["langseg", "monai"] = "langseg", mask_text_padding: bool = True,
                 max_text_length: int = 24, text_norm: bool = False,
                 optimizer: OptimizerCallable = lambda params: torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-2),
                 **kwargs: Any) -> None:
        super().__init__(max_text_length=max_text_length, optimizer=optimizer, **kwargs)
        layers = range(1, self.text_encoder.num_layers + 1) if text_layers is None else text_layers
        self.net = HiMixNet(self.in_channels, self.text_dim, tuple(layers), encoder_name, encoder_checkpoint,
                            max_text_length, text_tokens, head_channels, heads, sigma, centred_fft, encoder_weights,
                            ffn, subpixel, mask_text_padding, text_norm)
        self.text_encoder.zero_padding = mask_text_padding  # False: the padded words' features, as encoded

    def default_lr_scheduler(self) -> LRSchedulerCallable:
        """Cosine annealing over 200 epochs to 1e-6, as GuideDecoder."""
        return partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=200, eta_min=1e-6)


register_variant("himix_small", HiMix, "HiMix on ConvNeXt-Atto with text_norm, AdamW at 1e-3, no schedule: "
                 "configs/himix.yaml.", encoder_name="convnext_atto", text_norm=True, optimizer=adamw(1e-3),
                 lr_scheduler=None)
