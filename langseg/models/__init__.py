"""LightningModules, one file per method, all registered in ``langseg.registry``."""
from langseg.models.base import LanguageGuidedSegmenter
from langseg.models.reclmis import RecLMIS
from langseg.models.unet import UNetBaseline

__all__ = ["LanguageGuidedSegmenter", "RecLMIS", "UNetBaseline"]
