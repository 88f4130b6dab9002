"""LSMS: Language-guided Scale-aware MedSegmentor (Ouyang et al., Sec. III).

SVLA encoder (Eq. 1-10) -> Full-Scale Decoder with a Hamburger head (Eq. 11-12); trained with focal +
boundary-weighted Dice (Eq. 13) plus 0.125 x the vision-language pixel contrastive loss (Eq. 14-15).
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from langseg.blocks.full_scale_decoder import FullScaleDecoder
from langseg.blocks.svla import LanguageGuidedVisionEncoder
from langseg.blocks.text_encoder import TextFeatures
from langseg.losses import boundary_weighted_dice_loss, focal_loss, pixel_text_contrastive_loss
from langseg.models.base import LanguageGuidedSegmenter
from langseg.registry import register_model


@register_model("lsms")
class LSMS(LanguageGuidedSegmenter):
    """LSMS; ``use_text=False`` is the paper's image-only variant (no language branch, no L_con, no text encoder).

    Defaults follow Table I (blocks 3/3/5/2, widths 64/128/320/512) and Sec. IV-C (d = 7, 11, 21,
    α = 0.125, λ = 1.2, τ = 0.1). ``mlp_ratios`` (the FFN width, unstated in the paper) default to 2.
    ``decoder_stages`` are 0-based stage indices fed to the decoder (paper: P2, P3, P4).
    """

    size_divisor = 32

    def __init__(
        self,
        in_channels: int = 1,
        use_text: bool = True,
        text_encoder: str = "minilm",
        freeze_text_encoder: bool = True,
        max_text_length: int = 32,
        dims: tuple[int, ...] = (64, 128, 320, 512),
        depths: tuple[int, ...] = (3, 3, 5, 2),
        mlp_ratios: tuple[float, ...] = (2.0, 2.0, 2.0, 2.0),
        kernel_sizes: tuple[int, ...] = (7, 11, 21),
        decoder_stages: tuple[int, ...] = (1, 2, 3),
        ham_channels: int = 256,
        decoder_channels: int = 256,
        nmf_rank: int = 16,
        con_weight: float = 0.125,
        temperature: float = 0.1,
        con_samples: int = 256,
        boundary_weight: float = 1.2,
        threshold: float = 0.5,
        lr: float = 3e-5,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(in_channels=in_channels, use_text=use_text, text_encoder=text_encoder,
                         freeze_text_encoder=freeze_text_encoder, max_text_length=max_text_length,
                         threshold=threshold, lr=lr, weight_decay=weight_decay)
        self.encoder = LanguageGuidedVisionEncoder(in_channels, self.text_dim, tuple(dims), tuple(depths),
                                                   tuple(mlp_ratios), tuple(kernel_sizes))
        self.decoder = FullScaleDecoder(tuple(dims), tuple(decoder_stages), ham_channels, decoder_channels, nmf_rank)
        self.text_proj = nn.Linear(self.text_dim, decoder_channels) if use_text and con_weight > 0 else None

    def forward(self, image: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        words, word_mask = (text.tokens, text.mask) if self.use_text else (None, None)
        pixels, logits = self.decoder(self.encoder(image, words, word_mask), image.shape[-2:])
        out = {"logits": logits}
        if self.training and self.text_proj is not None:
            mean_words = text.tokens.sum(1) / text.mask.sum(1, keepdim=True).clamp_min(1).to(text.tokens.dtype)
            out["pixels"], out["text"] = pixels, self.text_proj(mean_words)  # L_avg = proj(mean_t L_t)
        return out

    def compute_loss(self, outputs: Mapping[str, Tensor], mask: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        """L = α L_con + L_seg (Eq. 15), L_seg = focal + boundary-weighted Dice (Eq. 13); L_con only in training."""
        logits = outputs["logits"]
        focal = focal_loss(logits, mask)
        dice = boundary_weighted_dice_loss(logits, mask, self.hparams.boundary_weight)
        losses = {"focal": focal, "dice": dice, "loss": focal + dice}
        if "pixels" in outputs:
            con = pixel_text_contrastive_loss(outputs["pixels"], outputs["text"], mask, self.hparams.temperature,
                                              self.hparams.con_samples)
            losses["con"] = con
            losses["loss"] = losses["loss"] + self.hparams.con_weight * con
        return losses
