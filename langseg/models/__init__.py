"""LightningModules, one file per method, all registered in ``langseg.registry``."""
from langseg.models.base import LanguageGuidedSegmenter
from langseg.models.unet import UNetBaseline
from langseg.models.guidedecoder import GuideDecoder
from langseg.models.himix import HiMix

__all__ = ["LanguageGuidedSegmenter", "UNetBaseline", "GuideDecoder", "HiMix"]
