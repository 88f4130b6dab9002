"""Reusable ``nn.Module`` blocks: tensors in, tensors out, nothing about training."""
from langseg.blocks.text_encoder import TextEncoder, TextFeatures, resolve_text_encoder_path

__all__ = ["TextEncoder", "TextFeatures", "resolve_text_encoder_path"]
