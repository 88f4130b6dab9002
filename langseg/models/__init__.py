"""One file per method: its plain network (``nn.Module``) and its thin LightningModule, registered by name."""
from langseg.models.base import LanguageGuidedSegmenter
from langseg.models.early_fusion import EarlyFusionNet, EarlyFusionSegmenter
from langseg.models.guidedecoder import GuideDecoder, GuideDecoderNet
from langseg.models.himix import HiMix, HiMixNet
from langseg.models.lsms import LSMS, LSMSNet
from langseg.models.lvit import LViT, LViTNet
from langseg.models.mmi_unet import MMIUNet, MMIUNetNet
from langseg.models.reclmis import RecLMIS, RecLMISNet
from langseg.models.unet import SMPNet, UNetBaseline

__all__ = ["EarlyFusionNet", "EarlyFusionSegmenter", "GuideDecoder", "GuideDecoderNet", "HiMix", "HiMixNet", "LSMS",
           "LSMSNet", "LViT", "LViTNet", "LanguageGuidedSegmenter", "MMIUNet", "MMIUNetNet", "RecLMIS", "RecLMISNet",
           "SMPNet", "UNetBaseline"]
