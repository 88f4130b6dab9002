"""HiMix (Hwang et al., WACV 2026): GuideDecoder whose stages read layer groups of the text encoder."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from langseg.blocks.himix import HiMixLayer, LayerGroupMixer
from langseg.blocks.text_encoder import TextFeatures
from langseg.models.guidedecoder import GuideDecoder
from langseg.registry import register_model


@register_model("himix")
class HiMix(GuideDecoder):
    """GuideDecoder with HiMix decoder layers; the text layers are mixed in groups, deepest group to coarsest stage.

    ``text_layers`` indexes the encoder's hidden states (0 = embeddings); by default every transformer
    layer ``1..N``, split into three equal consecutive groups (N must be a multiple of 3).
    """

    text_hidden_states = True

    def __init__(self, in_channels: int = 1, encoder_name: str = "convnext_tiny", encoder_checkpoint: str | None = None,
                 text_encoder: str = "minilm", freeze_text_encoder: bool = True, max_text_length: int = 24,
                 text_tokens: tuple[int, int, int] = (24, 12, 9), text_layers: Sequence[int] | None = None,
                 heads: int = 8, sigma: float = 5.0, centred_fft: bool = True, head_channels: int = 24,
                 dice_weight: float = 1.0, bce_weight: float = 1.0, threshold: float = 0.5, lr: float = 3e-4,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(in_channels=in_channels, encoder_name=encoder_name, encoder_checkpoint=encoder_checkpoint,
                         text_encoder=text_encoder, freeze_text_encoder=freeze_text_encoder,
                         max_text_length=max_text_length, text_tokens=text_tokens, head_channels=head_channels,
                         dice_weight=dice_weight, bce_weight=bce_weight, threshold=threshold, lr=lr,
                         weight_decay=weight_decay)
        layers = range(1, self.text_encoder.num_layers + 1) if text_layers is None else text_layers
        self.mixer = LayerGroupMixer(layers, groups=len(self.guides))

    def build_guide(self, stage: int, channels: int, text_tokens: tuple[int, int], self_heads: int,
                    cross_heads: int) -> nn.Module:
        hp = self.hparams  # saved by the base __init__, before the stages are built
        return HiMixLayer(channels, self.text_dim, text_tokens, heads=hp.heads, sigma=hp.sigma,
                          centred_fft=hp.centred_fft)

    def stage_texts(self, text: TextFeatures) -> list[Tensor]:
        if text.hidden_states is None:
            raise ValueError("HiMix needs every hidden state of the text encoder (text_hidden_states=True)")
        return self.mixer(text.hidden_states)
