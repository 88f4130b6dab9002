"""The smallest sensible builds of every registered model family, and a minimal text-guided method."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from langseg.blocks import TextFeatures
from langseg.models import LanguageGuidedSegmenter

# Overrides that make each family tiny (text encoder: the random 4-layer, 32-d BERT); variants use their family's.
TINY = {
    "unet": dict(decoder_channels=(16, 8, 8, 8, 8)),
    "lsms": dict(text_encoder="tiny", dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), kernel_sizes=(3, 5),
                 ham_channels=16, decoder_channels=16, nmf_rank=4),
    "reclmis": dict(text_encoder="tiny", widths=(4, 8, 16, 32, 32), num_heads=4),
    "guidedecoder": dict(text_encoder="tiny", encoder_name="convnext_atto", max_text_length=16, text_tokens=(16, 8, 4)),
    "himix": dict(text_encoder="tiny", encoder_name="convnext_atto", max_text_length=16, text_tokens=(16, 8, 4),
                  text_layers=(2, 3, 4)),
    "early_fusion": dict(text_encoder="tiny", encoder_depth=4, decoder_channels=(32, 16, 8, 8)),
    "mmi_unet": dict(text_encoder="tiny", encoder_name="convnext_atto", max_text_length=16),
    "lvit": dict(text_encoder="tiny", widths=(4, 8, 16, 32, 32), num_heads=2, image_size=32),
}


def tiny_overrides(name: str) -> dict:
    """The tiny overrides of a registered model name (``lsms_small`` -> those of ``lsms``)."""
    return TINY[name.removesuffix("_small")]


class TextGateNet(nn.Module):
    """Smallest text-guided network: a conv net whose features are gated by the sentence embedding."""

    def __init__(self, in_channels: int, text_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.gate = nn.Linear(text_dim, 4)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, image: Tensor, text: TextFeatures) -> dict[str, Tensor]:
        feats = torch.relu(self.conv(image)) * torch.sigmoid(self.gate(text.sentence))[..., None, None]
        return {"logits": self.head(feats)}


class TextGate(LanguageGuidedSegmenter):
    """``TextGateNet`` with the base's defaults."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = TextGateNet(self.in_channels, self.text_dim)
