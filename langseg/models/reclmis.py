"""RecLMIS: cross-modal conditioned reconstruction for language-guided medical image segmentation.

A U-Net with LViT's PLAM skips; at its coarsest stage one conditioned interaction (CI) fuses the words
into the patches. During training, CI also predicts patches and words of interest, which weight a
fine-grained contrastive loss and steer two conditioned reconstructors (vision from text, text from
vision). At inference (``net.eval()``) only the encoder, the text-to-vision half of CI and the decoder run.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from langseg.blocks.augmentation import PhotometricAugmentation
from langseg.blocks.conditioned import (ConditionedInteraction, ConditionedReconstructor,
                                       OfficialConditionedInteraction, OfficialConditionedReconstructor,
                                       sample_weighted_mask)
from langseg.blocks.layers import sine_position_encoding_2d
from langseg.blocks.text_encoder import TextFeatures
from langseg.blocks.unet_plam import UNetDecoder, UNetEncoder
from langseg.errors import ConfigError
from langseg.losses import conditioned_contrastive_loss, weighted_reconstruction_loss
from langseg.models.base import LanguageGuidedSegmenter, adamw
from langseg.registry import register_model, register_variant

Interaction = Literal["paper", "official"]
CclSoftmax = Literal["once", "twice"]
CclPadding = Literal["exclude", "zero"]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}; expected one of {list(choices)}")


class RecLMISNet(nn.Module):
    """U-Net + PLAM with conditioned interaction at the bottleneck and, in training, conditioned reconstruction.

    ``vision_mask_ratio`` / ``text_mask_ratio`` are alpha_v / alpha_t of Eq. 7 / 9; ``recon_depth`` the
    number of conditioned transformer layers of each reconstructor: ``reconstructor: paper`` builds
    ``ConditionedReconstructor`` (cross-attention + MLP, pre-norm), ``official`` the official code's
    ``OfficialConditionedReconstructor`` (a context stack and a query stack, each ``recon_depth`` post-norm layers
    with causal self-attention). ``head_dropout`` drops the features the W_poi / W_woi heads read (training
    only). ``mask_topup``: a row with fewer positive weights than patches (words) to mask masks only those
    (False) or tops up with uniform picks (True, the official ``mask_mode_dist_random``). In eval mode the
    output is the logits alone; in training mode it also holds what the losses of Eq. 4-10 read.
    """

    inference_modules: tuple[str, ...] = ("encoder", "interaction.text_to_vision", "decoder")

    def __init__(self, in_channels: int = 1, text_dim: int = 384, widths: Sequence[int] = (64, 128, 256, 512, 512),
                 num_heads: int = 8, mlp_ratio: float = 4.0, recon_depth: int = 3, vision_mask_ratio: float = 0.5,
                 text_mask_ratio: float = 0.3, interaction: Interaction = "paper", position_grid: int = 14,
                 text_target_dim: int | None = None, reconstructor: Interaction = "paper",
                 head_dropout: float = 0.0, mask_topup: bool = False) -> None:
        super().__init__()
        if not (0.0 <= vision_mask_ratio <= 1.0 and 0.0 <= text_mask_ratio <= 1.0):
            raise ConfigError("vision_mask_ratio and text_mask_ratio must lie in [0, 1]")
        if not 0.0 <= head_dropout < 1.0:
            raise ConfigError(f"head_dropout={head_dropout}; expected a probability in [0, 1)")
        _check_choice("interaction", interaction, ("paper", "official"))
        _check_choice("reconstructor", reconstructor, ("paper", "official"))
        dim = widths[-1]
        self.vision_mask_ratio, self.text_mask_ratio = vision_mask_ratio, text_mask_ratio
        self.mask_topup = mask_topup
        self.interaction_form = interaction
        self.encoder = UNetEncoder(in_channels, widths)
        if interaction == "paper":
            self.interaction = ConditionedInteraction(dim, text_dim, num_heads, mlp_ratio, head_dropout)
        else:
            self.interaction = OfficialConditionedInteraction(dim, text_dim, num_heads, position_grid, head_dropout)
            self.inference_modules = ("encoder", "interaction.fusion", "decoder")
        self.decoder = UNetDecoder(widths)
        rebuild = ConditionedReconstructor if reconstructor == "paper" else OfficialConditionedReconstructor
        self.vision_reconstructor = rebuild(dim, recon_depth, num_heads, mlp_ratio)
        self.text_reconstructor = rebuild(dim, recon_depth, num_heads, mlp_ratio, text_target_dim)

    @property
    def output_stride(self) -> int:
        return self.encoder.output_stride

    def inference_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters that run in eval mode: those of ``inference_modules`` (no reconstructors, no heads)."""
        for name in self.inference_modules:
            yield from self.get_submodule(name).parameters()

    def forward(self, image: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        if text is None:
            raise ConfigError("RecLMIS needs text: pass texts to segment() or use a text-labelled dataset")
        side = self.output_stride
        if image.shape[-1] % side or image.shape[-2] % side:
            raise ConfigError(f"RecLMIS needs image sides that are multiples of {side}, got {tuple(image.shape[-2:])}")
        feats = self.encoder(image)
        ci = self.interaction(feats[-1], text.tokens, text.mask, conditions=self.training)
        logits = self.decoder(ci.vision_out, feats[:-1])
        if not self.training:
            return {"logits": logits}
        # Eq. 7: zero alpha_v*N patches drawn by W_poi. Paper form: masked tokens keep a position code.
        patch_masked = sample_weighted_mask(ci.w_poi, self.vision_mask_ratio, top_up=self.mask_topup)
        v_query = ci.v.masked_fill(patch_masked.unsqueeze(-1), 0.0)
        v_context = ci.v if ci.pos is None else ci.v + ci.pos
        v_hat = self.vision_reconstructor(v_query if ci.pos is None else v_query + ci.pos, ci.e, ci.w_woi,
                                          ci.word_mask)
        # Eq. 9: zero alpha_t*L real words drawn by W_woi; paper form: words keep a 1D position code.
        word_masked = sample_weighted_mask(ci.w_woi, self.text_mask_ratio, ci.word_mask, self.mask_topup)
        e_query = ci.e.masked_fill(word_masked.unsqueeze(-1), 0.0)
        if ci.pos is not None:
            e_query = e_query + sine_position_encoding_2d(1, ci.e.shape[1], ci.e.shape[-1], ci.e.device).to(ci.e.dtype)
        e_hat = self.text_reconstructor(e_query, v_context, ci.w_poi)
        return {"logits": logits, "v": ci.v, "e": ci.e, "v_hat": v_hat, "e_hat": e_hat, "w_poi": ci.w_poi,
                "w_woi": ci.w_woi, "word_mask": ci.word_mask, "patch_masked": patch_masked,
                "word_masked": word_masked, "v_prime": ci.vision_out.flatten(2).transpose(1, 2), "words": text.tokens}


@register_model("reclmis")
class RecLMIS(LanguageGuidedSegmenter):
    """RecLMIS (Huang et al.): U-Net + PLAM, conditioned interaction, conditioned reconstruction (Eq. 1-11).

    Loss (Eq. 11): ``v2t_weight * L_V2T + t2v_weight * L_T2V + ccl_weight * L_CCL
    + seg_weight * (dice_weight * Dice + bce_weight * CE)``, paper values (1, 1, 0.2, 5). Paper recipe
    (Sec. IV-B): AdamW at 3e-4 with cosine annealing over 200 epochs; the default augmentation is its
    photometric one (Gaussian blur, contrast, and for RGB saturation/hue jitter).

    ``interaction``: ``paper`` (V attends to E; pre-norm layers with MLP and residual) or ``official`` (the
    official code's ``E' = MHA(E, V)``, ``V' = MHA(V, E')`` with a learned ``position_grid`` x ``position_grid``
    position table). ``aux_losses``: ``paper`` (Eq. 8/10: MSE weighted by W_poi/W_woi against the
    stop-gradient V and E) or ``official`` (plain MSE against V' and the text encoder's own features, with
    gradient). ``reconstructor``: ``paper`` (conditioned cross-attention layers, Eq. 7/9) or ``official`` (the
    official ``DualTransformer``: causal self-attention, weighted cross-attention, FFN, post-norm).
    ``ccl_softmax``: ``once`` (Eq. 5 weights W_poi / W_woi) or ``twice`` (the official code softmaxes them again
    before the contrastive loss, padding words included). ``ccl_padding``: padding words are left out of each
    patch's max over words (``exclude``) or score 0 there (``zero``, the official code). ``mask_topup``: see
    ``RecLMISNet``. ``head_dropout``: dropout before the W heads (official MosMedData+: 0.5).
    ``configs/reclmis_official.yaml`` sets the official code's other values (4 heads, depth 4, tau 0.01, Adam
    with warm-restart cosine).
    """

    paper = 'Huang et al., Cross-Modal Conditioned Reconstruction for Language-guided Medical Image Segmentation'

    requires_text = True

    def __init__(
        self,
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
        interaction: Interaction = "paper",
        position_grid: int = 14,
        aux_losses: Interaction = "paper",
        reconstructor: Interaction = "paper",
        ccl_softmax: CclSoftmax = "once",
        head_dropout: float = 0.0,
        ccl_padding: CclPadding = "exclude",
        mask_topup: bool = False,
        optimizer: OptimizerCallable = lambda params: torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-2),
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        _check_choice("aux_losses", aux_losses, ("paper", "official"))
        _check_choice("ccl_softmax", ccl_softmax, ("once", "twice"))
        _check_choice("ccl_padding", ccl_padding, ("exclude", "zero"))
        text_target_dim = self.text_dim if aux_losses == "official" else None  # rebuild the encoder's own words
        self.net = RecLMISNet(self.in_channels, self.text_dim, widths, num_heads, mlp_ratio, recon_depth,
                              vision_mask_ratio, text_mask_ratio, interaction, position_grid, text_target_dim,
                              reconstructor, head_dropout, mask_topup)

    def default_lr_scheduler(self) -> LRSchedulerCallable:
        """Cosine annealing over 200 epochs (Sec. IV-B)."""
        return partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=200)

    def default_augmentation(self) -> nn.Module:
        return PhotometricAugmentation()

    def compute_loss(self, outputs: Mapping[str, Tensor], mask: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        """Eq. 11; outside training only the segmentation term exists (the auxiliary heads do not run)."""
        hp = self.hparams
        losses = super().compute_loss(outputs, mask, text)
        losses["seg"] = losses["loss"]
        total = hp.seg_weight * losses["seg"]
        if "v_hat" in outputs:
            if hp.aux_losses == "official":  # plain MSE against V' and the encoder's words, with gradient
                losses["t2v"] = F.mse_loss(outputs["v_hat"].float(), outputs["v_prime"].float())
                losses["v2t"] = F.mse_loss(outputs["e_hat"].float(), outputs["words"].float())
            else:  # Eq. 8/10 against the (stop-gradient) projected features V and E
                losses["t2v"] = weighted_reconstruction_loss(outputs["v_hat"], outputs["v"].detach(), outputs["w_poi"])
                losses["v2t"] = weighted_reconstruction_loss(outputs["e_hat"], outputs["e"].detach(), outputs["w_woi"])
            w_poi, w_woi = outputs["w_poi"], outputs["w_woi"]
            if hp.ccl_softmax == "twice":  # the official cond_cons_loss softmaxes the weights again, over every word
                w_poi, w_woi = w_poi.softmax(-1), w_woi.softmax(-1)
            losses["ccl"] = conditioned_contrastive_loss(outputs["v"], outputs["e"], w_poi, w_woi,
                                                         outputs["word_mask"], hp.ccl_temperature, hp.ccl_padding)
            total = (total + hp.v2t_weight * losses["v2t"] + hp.t2v_weight * losses["t2v"]
                     + hp.ccl_weight * losses["ccl"])
        losses["loss"] = total
        return losses


register_variant("reclmis_small", RecLMIS, "RecLMIS with narrow stages (16 .. 128) and 4 heads, AdamW at 1e-3, "
                 "no schedule, no augmentation: configs/reclmis.yaml.", widths=(16, 32, 64, 128, 128), num_heads=4,
                 optimizer=adamw(1e-3), lr_scheduler=None, augmentation=False)
