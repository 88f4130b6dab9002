"""LightningModules, one file per method, all registered in ``langseg.registry``."""
from langseg.models.base import LanguageGuidedSegmenter
from langseg.models.early_fusion import EarlyFusionSegmenter
from langseg.models.guidedecoder import GuideDecoder
from langseg.models.himix import HiMix
from langseg.models.lsms import LSMS
from langseg.models.reclmis import RecLMIS
from langseg.models.unet import UNetBaseline

__all__ = ["EarlyFusionSegmenter", "GuideDecoder", "HiMix", "LSMS", "LanguageGuidedSegmenter", "RecLMIS",
           "UNetBaseline"]
