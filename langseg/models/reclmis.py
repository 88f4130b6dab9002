"""RecLMIS: cross-modal conditioned reconstruction for language-guided medical image segmentation.

A U-Net with LViT's PLAM skips; at its coarsest stage one conditioned interaction (CI) fuses the words
into the patches. During training, CI also predicts patches and words of interest, which weight a
fine-grained contrastive loss and steer two conditioned reconstructors (vision from text, text from
vision). At inference only the encoder, the text-to-vision half of CI and the decoder run
(``export_inference`` returns exactly that).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import kornia.augmentation as K
from torch import Tensor, nn

from langseg.blocks.conditioned import (ConditionedInteraction, ConditionedReconstructor, TextToVisionEncoder,
                                        sample_weighted_mask, sine_position_encoding)
from langseg.blocks.text_encoder import TextFeatures
from langseg.blocks.unet_plam import UNetDecoder, UNetEncoder
from langseg.errors import ConfigError
from langseg.losses import conditioned_contrastive_loss, weighted_reconstruction_loss
from langseg.models.base import LanguageGuidedSegmenter
from langseg.registry import register_model


class PhotometricAugmentation(nn.Module):
    """Gaussian blur with a random sigma and contrast jitter (plus saturation and hue for RGB), on the device.

    Photometric only, so masks and text stay valid. Each image is mapped to [0, 1] by its own min/max,
    augmented, and mapped back, so normalised inputs are handled.
    """

    def __init__(self, channels: int, blur_sigma: tuple[float, float] = (0.1, 2.0), contrast: float = 0.2,
                 saturation: float = 0.2, hue: float = 0.05, p: float = 0.5) -> None:
        super().__init__()
        colour = {"saturation": saturation, "hue": hue} if channels == 3 else {}
        self.augment = K.AugmentationSequential(K.RandomGaussianBlur(5, blur_sigma, p=p),
                                                K.ColorJiggle(contrast=contrast, p=p, **colour))

    def forward(self, image: Tensor) -> Tensor:
        lo = image.amin((1, 2, 3), keepdim=True)
        scale = (image.amax((1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
        return self.augment((image - lo) / scale) * scale + lo


class RecLMISInference(nn.Module):
    """The inference graph of RecLMIS: encoder, text-to-vision half of CI, decoder (no reconstructors)."""

    def __init__(self, encoder: UNetEncoder, text_to_vision: TextToVisionEncoder, decoder: UNetDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.text_to_vision = text_to_vision
        self.decoder = decoder

    def forward(self, image: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """``image (B, C, H, W)``, encoded ``words (B, L, D)`` and ``word_mask (B, L)`` -> logits ``(B, 1, H, W)``."""
        feats = self.encoder(image)
        return self.decoder(self.text_to_vision(feats[-1], words, word_mask), feats[:-1])


@register_model("reclmis")
class RecLMIS(LanguageGuidedSegmenter):
    """RecLMIS (Huang et al.): U-Net + PLAM, conditioned interaction, conditioned reconstruction (Eq. 1-11).

    Loss (Eq. 11): ``v2t_weight * L_V2T + t2v_weight * L_T2V + ccl_weight * L_CCL
    + seg_weight * (dice_weight * Dice + bce_weight * CE)``, paper values (1, 1, 0.2, 5).
    ``vision_mask_ratio`` / ``text_mask_ratio`` are alpha_v / alpha_t; ``recon_depth`` the number of
    conditioned transformer layers of each reconstructor; ``augment`` turns on the paper's photometric
    augmentation in the training step.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        recon_depth: int = 3,
        vision_mask_ratio: float = 0.5,
        text_mask_ratio: float = 0.3,
        v2t_weight: float = 1.0,
        t2v_weight: float = 1.0,
        ccl_weight: float = 0.2,
        seg_weight: float = 5.0,
        ccl_temperature: float = 0.07,
        augment: bool = False,
        text_encoder: str = "minilm",
        freeze_text_encoder: bool = True,
        max_text_length: int = 32,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        threshold: float = 0.5,
        lr: float = 3e-4,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(in_channels=in_channels, use_text=True, text_encoder=text_encoder,
                         freeze_text_encoder=freeze_text_encoder, max_text_length=max_text_length,
                         dice_weight=dice_weight, bce_weight=bce_weight, threshold=threshold, lr=lr,
                         weight_decay=weight_decay)
        if not (0.0 <= vision_mask_ratio <= 1.0 and 0.0 <= text_mask_ratio <= 1.0):
            raise ConfigError("vision_mask_ratio and text_mask_ratio must lie in [0, 1]")
        dim = widths[-1]
        self.encoder = UNetEncoder(in_channels, widths)
        self.size_divisor = 2 ** (len(widths) - 1)
        self.interaction = ConditionedInteraction(dim, self.text_dim, num_heads, mlp_ratio)
        self.decoder = UNetDecoder(widths)
        self.vision_reconstructor = ConditionedReconstructor(dim, recon_depth, num_heads, mlp_ratio)
        self.text_reconstructor = ConditionedReconstructor(dim, recon_depth, num_heads, mlp_ratio)
        self.photometric = PhotometricAugmentation(in_channels) if augment else None

    def forward(self, image: Tensor, text: TextFeatures | None) -> Tensor | dict[str, Tensor]:
        if text is None:
            raise ConfigError("RecLMIS needs text: pass texts to segment() or use a text-labelled dataset")
        side = self.encoder.reduction
        if image.shape[-1] % side or image.shape[-2] % side:
            raise ConfigError(f"RecLMIS needs image sides that are multiples of {side}, got {tuple(image.shape[-2:])}")
        feats = self.encoder(image)
        ci = self.interaction(feats[-1], text.tokens, text.mask, conditions=self.training)
        logits = self.decoder(ci.vision_out, feats[:-1])
        if not self.training:
            return logits
        hp = self.hparams
        # Eq. 7: zero alpha_v*N patches drawn by W_poi; the masked patches keep their position code.
        patch_masked = sample_weighted_mask(ci.w_poi, hp.vision_mask_ratio)
        v_query = ci.v.masked_fill(patch_masked.unsqueeze(-1), 0.0) + ci.pos
        v_hat = self.vision_reconstructor(v_query, ci.e, ci.w_woi, ci.word_mask)
        # Eq. 9: zero alpha_t*L real words drawn by W_woi; words keep a 1D position code.
        word_masked = sample_weighted_mask(ci.w_woi, hp.text_mask_ratio, valid=ci.word_mask)
        word_pos = sine_position_encoding(1, ci.e.shape[1], ci.e.shape[-1], ci.e.device).to(ci.e.dtype)
        e_query = ci.e.masked_fill(word_masked.unsqueeze(-1), 0.0) + word_pos
        e_hat = self.text_reconstructor(e_query, ci.v + ci.pos, ci.w_poi)
        return {"logits": logits, "v": ci.v, "e": ci.e, "v_hat": v_hat, "e_hat": e_hat, "w_poi": ci.w_poi,
                "w_woi": ci.w_woi, "word_mask": ci.word_mask, "patch_masked": patch_masked,
                "word_masked": word_masked}

    def compute_loss(self, outputs: Mapping[str, Tensor], mask: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        """Eq. 11; outside training only the segmentation term exists (the auxiliary heads do not run)."""
        hp = self.hparams
        losses = super().compute_loss(outputs, mask, text)
        losses["seg"] = losses["loss"]
        total = hp.seg_weight * losses["seg"]
        if "v_hat" in outputs:
            # Reconstruction targets are the (stop-gradient) projected features V and E.
            losses["t2v"] = weighted_reconstruction_loss(outputs["v_hat"], outputs["v"].detach(), outputs["w_poi"])
            losses["v2t"] = weighted_reconstruction_loss(outputs["e_hat"], outputs["e"].detach(), outputs["w_woi"])
            losses["ccl"] = conditioned_contrastive_loss(outputs["v"], outputs["e"], outputs["w_poi"],
                                                         outputs["w_woi"], outputs["word_mask"], hp.ccl_temperature)
            total = (total + hp.v2t_weight * losses["v2t"] + hp.t2v_weight * losses["t2v"]
                     + hp.ccl_weight * losses["ccl"])
        losses["loss"] = total
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.photometric is not None:
            batch = {**batch, "image": self.photometric(batch["image"])}
        return super().training_step(batch, batch_idx)

    def export_inference(self) -> RecLMISInference:
        """A copy of the inference graph (no reconstructors, no vision-to-text half, no text encoder), in eval mode."""
        return RecLMISInference(copy.deepcopy(self.encoder), copy.deepcopy(self.interaction.text_to_vision),
                                copy.deepcopy(self.decoder)).eval()
