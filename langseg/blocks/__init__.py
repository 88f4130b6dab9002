"""Reusable ``nn.Module`` blocks: tensors in, tensors out, nothing about training."""
from langseg.blocks.augmentation import JointAugmentation, PhotometricAugmentation, random_zoom
from langseg.blocks.bridger import Bridger, interactor
from langseg.blocks.conditioned import (ConditionedAttention, ConditionedInteraction, ConditionedReconstructor,
                                        CrossAttentionLayer, TextToVisionEncoder, sample_weighted_mask)
from langseg.blocks.full_scale_decoder import FullScaleDecoder
from langseg.blocks.guide import GuideLayer, SubpixelHead, TextTokenProjection, UpBlock
from langseg.blocks.hamburger import NMF2D, Hamburger, HamburgerHead
from langseg.blocks.himix import FrequencyRefinement, HiMixLayer, LayerGroupMixer
from langseg.blocks.layers import ConvNormAct, sine_position_encoding_1d, sine_position_encoding_2d
from langseg.blocks.pseudo_image import TextToPseudoImage
from langseg.blocks.svla import LanguageGuidedVisionEncoder, ScaleAwareVLAttention, SVLAEncoderBlock
from langseg.blocks.text_encoder import TextEncoder, TextFeatures, resolve_text_encoder_path
from langseg.blocks.unet_plam import PixelLevelAttention, UNetDecoder, UNetEncoder

__all__ = ["NMF2D", "Bridger", "ConditionedAttention", "ConditionedInteraction", "ConditionedReconstructor", "ConvNormAct",
           "CrossAttentionLayer", "FrequencyRefinement", "FullScaleDecoder", "GuideLayer", "Hamburger",
           "HamburgerHead", "HiMixLayer", "JointAugmentation", "LanguageGuidedVisionEncoder", "LayerGroupMixer",
           "PhotometricAugmentation", "PixelLevelAttention", "SVLAEncoderBlock", "ScaleAwareVLAttention",
           "SubpixelHead", "TextEncoder", "TextFeatures", "TextToPseudoImage", "TextToVisionEncoder",
           "TextTokenProjection", "UNetDecoder", "UNetEncoder", "UpBlock", "interactor", "random_zoom",
           "resolve_text_encoder_path", "sample_weighted_mask", "sine_position_encoding_1d",
           "sine_position_encoding_2d"]
