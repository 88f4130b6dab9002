"""LSMS: Language-guided Scale-aware MedSegmentor (Ouyang et al., Sec. III).

SVLA encoder (Eq. 1-10) -> Full-Scale Decoder with a Hamburger head (Eq. 11-12); trained with focal +
boundary-weighted Dice (Eq. 13) plus 0.125 x the vision-language pixel contrastive loss (Eq. 14-15).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Literal, Mapping

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from langseg.blocks.full_scale_decoder import FullScaleDecoder
from langseg.blocks.svla import LanguageGuidedVisionEncoder
from langseg.blocks.text_encoder import TextFeatures
from langseg.losses import boundary_weighted_dice_loss, focal_loss, pixel_text_contrastive_loss
from langseg.models.base import LanguageGuidedSegmenter, adamw
from langseg.registry import register_model, register_variant


class LSMSNet(nn.Module):
    """SVLA encoder -> Full-Scale Decoder; ``text_dim=0`` is the image-only variant (no language branch).

    In training mode with ``contrastive=True`` the outputs also hold the decoder's pixel features and the
    projected mean word feature ``L_avg`` that the contrastive loss (Eq. 14) compares.
    """

    def __init__(self, in_channels: int = 1, text_dim: int = 384, dims: tuple[int, ...] = (64, 128, 320, 512),
                 depths: tuple[int, ...] = (3, 3, 5, 2), mlp_ratios: tuple[float, ...] = (2.0, 2.0, 2.0, 2.0),
                 kernel_sizes: tuple[int, ...] = (7, 11, 21), decoder_stages: tuple[int, ...] = (1, 2, 3),
                 ham_channels: int = 256, decoder_channels: int = 256, nmf_rank: int = 16,
                 contrastive: bool = True, align_stage: int = 0) -> None:
        super().__init__()
        self.encoder = LanguageGuidedVisionEncoder(in_channels, text_dim, tuple(dims), tuple(depths),
                                                   tuple(mlp_ratios), tuple(kernel_sizes))
        self.decoder = FullScaleDecoder(tuple(dims), tuple(decoder_stages), ham_channels, decoder_channels, nmf_rank,
                                        align_stage=align_stage)
        self.text_proj = nn.Linear(text_dim, decoder_channels) if text_dim and contrastive else None

    @property
    def output_stride(self) -> int:
        return self.encoder.output_stride

    def forward(self, image: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        words, word_mask = (text.tokens, text.mask) if text is not None else (None, None)
        pixels, logits = self.decoder(self.encoder(image, words, word_mask), image.shape[-2:])
        out = {"logits": logits}
        if self.training and self.text_proj is not None and text is not None:
            mean_words = text.tokens.sum(1) / text.mask.sum(1, keepdim=True).clamp_min(1).to(text.tokens.dtype)
            out["pixels"], out["text"] = pixels, self.text_proj(mean_words)  # L_avg = proj(mean_t L_t)
        return out


@register_model("lsms")
class LSMS(LanguageGuidedSegmenter):
    """LSMS: SVLA encoder, Full-Scale Decoder and Hamburger head, trained with focal + boundary-weighted Dice + α L_con (Eq. 15).

    ``use_text=False`` is the paper's image-only variant (no language branch, no L_con, no text encoder).

    Defaults follow Table I (blocks 3/3/5/2, widths 64/128/320/512) and Sec. IV-C (d = 7, 11, 21,
    α = 0.125, λ = 1.2, τ = 0.1; AdamW at 3e-5 with polynomial decay, power 0.9, over 100 epochs).
    ``mlp_ratios`` (the FFN width, unstated in the paper) default to 2. ``decoder_stages`` are 0-based
    stage indices fed to the decoder (paper: P2, P3, P4); ``align_stage`` the stage whose size they are aligned
    to (0 = H/4 as Eq. 11 reads, 1 = H/8, which matches Table II's FLOPs; ``configs/lsms_paper.yaml``).
    ``con_form``: L_con as InfoNCE (``"infonce"``, with the log) or Eq. 14 as printed (``"literal"``).
    """

    paper = 'Ouyang et al., Language-guided Scale-aware MedSegmentor for Lesion Segmentation in Medical Imaging'

    def __init__(
        self,
        dims: tuple[int, ...] = (64, 128, 320, 512),
        depths: tuple[int, ...] = (3, 3, 5, 2),
        mlp_ratios: tuple[float, ...] = (2.0, 2.0, 2.0, 2.0),
        kernel_sizes: tuple[int, ...] = (7, 11, 21),
        decoder_stages: tuple[int, ...] = (1, 2, 3),
        align_stage: int = 0,
        ham_channels: int = 256,
        decoder_channels: int = 256,
        nmf_rank: int = 16,
        con_weight: float = 0.125,
        temperature: float = 0.1,
        con_samples: int = 256,
        con_form: Literal["infonce", "literal"] = "infonce",
        boundary_weight: float = 1.2,
        optimizer: OptimizerCallable = lambda params: torch.optim.AdamW(params, lr=3e-5, weight_decay=1e-2),
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        self.net = LSMSNet(self.in_channels, self.text_dim, dims, depths, mlp_ratios, kernel_sizes, decoder_stages,
                           ham_channels, decoder_channels, nmf_rank, contrastive=con_weight > 0,
                           align_stage=align_stage)

    def default_lr_scheduler(self) -> LRSchedulerCallable:
        """Polynomial decay (power 0.9) over 100 epochs (Sec. IV-C)."""
        return partial(torch.optim.lr_scheduler.PolynomialLR, total_iters=100, power=0.9)

    def compute_loss(self, outputs: Mapping[str, Tensor], mask: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        """L = α L_con + L_seg (Eq. 15), L_seg = focal + boundary-weighted Dice (Eq. 13); L_con only in training."""
        logits = outputs["logits"]
        focal = focal_loss(logits, mask)
        dice = boundary_weighted_dice_loss(logits, mask, self.hparams.boundary_weight)
        losses = {"focal": focal, "dice": dice, "loss": focal + dice}
        if "pixels" in outputs:
            con = pixel_text_contrastive_loss(outputs["pixels"], outputs["text"], mask, self.hparams.temperature,
                                              self.hparams.con_samples, form=self.hparams.con_form)
            losses["con"] = con
            losses["loss"] = losses["loss"] + self.hparams.con_weight * con
        return losses


register_variant("lsms_small", LSMS, "LSMS with narrow stages and 1/1/2/1 blocks, AdamW at 4e-3, no schedule: "
                 "configs/lsms.yaml.", dims=(16, 32, 64, 96), depths=(1, 1, 2, 1), ham_channels=64,
                 decoder_channels=64, nmf_rank=8, optimizer=adamw(4e-3), lr_scheduler=None)
