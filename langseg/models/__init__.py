"""LightningModules, one file per method, all registered in ``langseg.registry``."""
from langseg.models.base import LanguageGuidedSegmenter
from langseg.models.early_fusion import EarlyFusionSegmenter
from langseg.models.unet import UNetBaseline

__all__ = ["EarlyFusionSegmenter", "LanguageGuidedSegmenter", "UNetBaseline"]
