"""Reusable ``nn.Module`` blocks: tensors in, tensors out, nothing about training."""
from langseg.blocks.pseudo_image import TextToPseudoImage
from langseg.blocks.text_encoder import TextEncoder, TextFeatures, resolve_text_encoder_path

__all__ = ["TextToPseudoImage", "TextEncoder", "TextFeatures", "resolve_text_encoder_path"]
