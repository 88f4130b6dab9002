"""Reusable ``nn.Module`` blocks: tensors in, tensors out, nothing about training."""
from langseg.blocks.guide import GuideLayer, SubpixelHead, TextTokenProjection, UpBlock
from langseg.blocks.himix import FrequencyRefinement, HiMixLayer, LayerGroupMixer
from langseg.blocks.text_encoder import TextEncoder, TextFeatures, resolve_text_encoder_path

__all__ = ["GuideLayer", "SubpixelHead", "TextTokenProjection", "UpBlock", "FrequencyRefinement", "HiMixLayer",
           "LayerGroupMixer", "TextEncoder", "TextFeatures", "resolve_text_encoder_path"]
