"""Early text-image fusion (arXiv 2510.12482): the text becomes a pseudo-image in front of any smp network."""
from __future__ import annotations

from functools import partial
from typing import Any, Literal, Mapping

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from langseg.blocks.augmentation import JointAugmentation
from langseg.blocks.pseudo_image import TextToPseudoImage
from langseg.blocks.text_encoder import TextFeatures
from langseg.losses import roi_l1_loss
from langseg.models.base import LanguageGuidedSegmenter, adamw
from langseg.models.unet import SMPNet
from langseg.registry import register_model, register_variant


class EarlyFusionNet(nn.Module):
    """``SMPNet`` on ``concat(image, TextToPseudoImage(sentence))``; ``text_dim=0`` is the SMPNet on the image alone.

    ``forward`` generates the pseudo-image from the text unless one is given (training generates it first
    so that it can be augmented together with the image and mask).
    """

    def __init__(self, in_channels: int = 1, text_dim: int = 384, generator_init: Literal["torch", "fan_in"] = "torch",
                 **smp_args: Any) -> None:
        super().__init__()
        self.generator = TextToPseudoImage(text_dim, in_channels, init=generator_init) if text_dim else None
        self.smp = SMPNet(in_channels * (2 if text_dim else 1), **smp_args)

    @property
    def output_stride(self) -> int:
        return self.smp.output_stride

    def pseudo_image(self, text: TextFeatures, size: tuple[int, int]) -> Tensor:
        """``(B, C, *size)`` pseudo-image of the batch's sentence embeddings."""
        return self.generator(text.sentence, size)

    def forward(self, image: Tensor, text: TextFeatures | None, pseudo_image: Tensor | None = None) -> dict[str, Tensor]:
        if self.generator is None:
            return self.smp(image)
        if pseudo_image is None:
            pseudo_image = self.pseudo_image(text, image.shape[-2:])
        logits = self.smp(torch.cat([image, pseudo_image.to(image.dtype)], 1))["logits"]
        return {"logits": logits, "pseudo_image": pseudo_image, "image": image}


@register_model("early_fusion")
class EarlyFusionSegmenter(LanguageGuidedSegmenter):
    """Early fusion: an ``EarlyFusionNet`` trained with Dice (+ optional BCE) + ``roi_weight`` * L1 between the
    pseudo-image and the image inside the mask; with ``use_text=False`` exactly ``smp.<arch>`` on the image.

    ``arch``/``encoder_name`` pick any segmentation-models-pytorch network (Unet, UnetPlusPlus, FPN,
    DeepLabV3Plus, ...). Default augmentation: ``JointAugmentation`` (horizontal flip, rotation/scale/shift)
    applied *after* the pseudo-image is generated, with one draw shared by image, pseudo-image and mask.
    The text is not rewritten on a horizontal flip, on purpose: the text's left/right (the patient's,
    radiological convention) has already become a place in the un-flipped pseudo-image, which is flipped
    with the image and mask, so it still marks the flipped lesion. Default recipe: AdamW at 3e-4 with
    cosine annealing over 100 epochs. ``generator_init``: the generator's initialisation (``TextToPseudoImage``);
    ``"torch"`` (default) is PyTorch's, ``"fan_in"`` (the quick config) lets the text move the pseudo-image from
    the first step. ``head_prior``: the segmentation head starts at that foreground fraction everywhere
    (``SMPNet``; the quick config's 0.05), None keeps smp's random init.
    """

    paper = 'A Text-Image Fusion Method with Data Augmentation Capabilities for Referring Medical Image Segmentation (arXiv 2510.12482)'

    def __init__(
        self,
        arch: str = "Unet",
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        encoder_depth: int | None = None,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        roi_weight: float = 0.1,
        generator_init: Literal["torch", "fan_in"] = "torch",
        head_prior: float | None = None,
        bce_weight: float = 0.0,
        optimizer: OptimizerCallable = lambda params: torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-2),
        **kwargs: Any,
    ) -> None:
        super().__init__(bce_weight=bce_weight, optimizer=optimizer, **kwargs)
        self.net = EarlyFusionNet(self.in_channels, self.text_dim, generator_init, arch=arch, encoder_name=encoder_name,
                                  encoder_weights=encoder_weights, encoder_depth=encoder_depth,
                                  decoder_channels=tuple(decoder_channels), head_prior=head_prior)
        self.net_inputs = ("pseudo_image",) if self.net.generator is not None else ()

    def default_lr_scheduler(self) -> LRSchedulerCallable:
        """Cosine annealing over 100 epochs."""
        return partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=100)

    def default_augmentation(self) -> nn.Module:
        return JointAugmentation()

    def transform_train_batch(self, batch: dict[str, Any], text: TextFeatures | None) -> dict[str, Any]:
        """Generates the pseudo-image, then augments image, pseudo-image and mask with one shared draw."""
        if self.net.generator is None:
            return super().transform_train_batch(batch, text)
        image, mask = batch["image"], batch["mask"]
        pseudo = self.net.pseudo_image(text, image.shape[-2:])
        if self.augmentation is not None:
            image, mask, pseudo = self.augmentation(image, mask, pseudo)
        return {**batch, "image": image, "mask": mask, "pseudo_image": pseudo}

    def compute_loss(self, outputs: Mapping[str, Tensor], mask: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        """Dice (+ BCE) on the logits + ``roi_weight`` * L1(pseudo-image, image * mask)."""
        losses = super().compute_loss(outputs, mask, text)
        if "pseudo_image" in outputs:
            losses["roi_l1"] = roi_l1_loss(outputs["pseudo_image"], outputs["image"], mask)
            losses["loss"] = losses["loss"] + self.hparams.roi_weight * losses["roi_l1"]
        return losses


register_variant("early_fusion_small", EarlyFusionSegmenter, "Early fusion on a narrow-decoder U-Net (ResNet-18), "
                 "fan-in generator init, head started at 5% foreground, Dice + BCE, AdamW at 1e-3, no schedule: "
                 "configs/early_fusion_unet.yaml.",
                 decoder_channels=(128, 64, 32, 16, 8), generator_init="fan_in", head_prior=0.05, bce_weight=1.0,
                 optimizer=adamw(1e-3), lr_scheduler=None)
