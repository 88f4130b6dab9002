"""Early text-image fusion (arXiv 2510.12482): the text becomes a pseudo-image in front of any smp network."""
from __future__ import annotations

from typing import Any, Mapping

import kornia.augmentation as K
import segmentation_models_pytorch as smp
import torch
from torch import Tensor

from langseg.blocks.pseudo_image import TextToPseudoImage
from langseg.blocks.text_encoder import TextFeatures
from langseg.losses import roi_l1_loss
from langseg.models.base import LanguageGuidedSegmenter
from langseg.registry import register_model


@register_model("early_fusion")
class EarlyFusionSegmenter(LanguageGuidedSegmenter):
    """``smp.<arch>`` on ``concat(image, TextToPseudoImage(sentence))``, trained with joint augmentation.

    ``arch``/``encoder_name`` pick any segmentation-models-pytorch network (Unet, UnetPlusPlus, FPN,
    DeepLabV3Plus, ...); its ``in_channels`` is doubled for the pseudo-image. With ``use_text=False``
    the model is exactly ``smp.<arch>`` on the image (no text encoder, no generator): the paper's
    with/without-text comparison is two configs. Loss: Dice (+ optional BCE) + ``roi_weight`` * L1
    between the pseudo-image and the image inside the mask.

    Augmentation: in ``training_step``, *after* the pseudo-image is generated, kornia applies one set
    of geometric parameters (horizontal flip, rotation/scale/shift) to image, pseudo-image and mask.
    The text is not rewritten on a horizontal flip, on purpose: the text's left/right (the patient's,
    radiological convention) has already been turned into a place in the un-flipped pseudo-image,
    and that pseudo-image is flipped together with the image and mask, so it still marks the flipped
    lesion. Rewriting "left"/"right" as well would flip the reference twice. This is the alignment
    that late fusion loses and early fusion keeps; set ``hflip_prob=0`` to switch flips off.
    """

    def __init__(
        self,
        in_channels: int = 1,
        use_text: bool = True,
        text_encoder: str = "minilm",
        freeze_text_encoder: bool = True,
        max_text_length: int = 32,
        arch: str = "Unet",
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        encoder_depth: int | None = None,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        augment: bool = True,
        hflip_prob: float = 0.5,
        rotation_degrees: float | tuple[float, float] = 15.0,
        scale: tuple[float, float] = (0.9, 1.1),
        translate: float = 0.1,
        affine_prob: float = 0.5,
        roi_weight: float = 0.1,
        dice_weight: float = 1.0,
        bce_weight: float = 0.0,
        threshold: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(in_channels=in_channels, use_text=use_text, text_encoder=text_encoder,
                         freeze_text_encoder=freeze_text_encoder, max_text_length=max_text_length,
                         dice_weight=dice_weight, bce_weight=bce_weight, threshold=threshold, lr=lr,
                         weight_decay=weight_decay)
        self.generator = TextToPseudoImage(self.text_dim, in_channels) if use_text else None
        extra = {"decoder_channels": list(decoder_channels)} if arch.lower().startswith("unet") else {}
        if encoder_depth is not None:  # None keeps the architecture's own depth (PSPNet: 3, most others: 5)
            extra["encoder_depth"] = encoder_depth
        self.size_divisor = 2 ** (encoder_depth or 5)
        self.net = smp.create_model(arch, encoder_name=encoder_name, encoder_weights=encoder_weights,
                                    in_channels=in_channels * (2 if use_text else 1),
                                    classes=1, **extra)
        self.augmentation = None
        if augment:
            self.augmentation = K.AugmentationSequential(
                K.RandomHorizontalFlip(p=hflip_prob),
                K.RandomAffine(degrees=rotation_degrees, translate=(translate, translate), scale=scale, p=affine_prob),
                data_keys=["input", "mask"])

    def pseudo_image(self, text: TextFeatures, size: tuple[int, int]) -> Tensor:
        """``(B, C, *size)`` pseudo-image of the batch's sentence embeddings."""
        return self.generator(text.sentence, size)

    def augment(self, image: Tensor, pseudo: Tensor | None, mask: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """One random geometric transform per sample, shared by image, pseudo-image and mask."""
        if self.augmentation is None:
            return image, pseudo, mask
        stacked = image if pseudo is None else torch.cat([image, pseudo.to(image.dtype)], 1)  # (B, 2C, H, W)
        stacked, mask = self.augmentation(stacked, mask.to(stacked.dtype))
        if pseudo is None:
            return stacked, None, mask
        return stacked[:, :image.shape[1]], stacked[:, image.shape[1]:], mask

    def segment_fused(self, image: Tensor, pseudo: Tensor | None) -> dict[str, Tensor]:
        """Logits of the smp network on ``concat(image, pseudo)`` (the image alone without text)."""
        if pseudo is None:
            return {"logits": self.net(image)}
        logits = self.net(torch.cat([image, pseudo.to(image.dtype)], 1))
        return {"logits": logits, "pseudo_image": pseudo, "image": image}

    def forward(self, image: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        pseudo = self.pseudo_image(text, image.shape[-2:]) if self.generator is not None else None
        return self.segment_fused(image, pseudo)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Generate the pseudo-image, augment image, pseudo-image and mask jointly, segment, and score
        against the augmented mask (``forward`` never sees the mask, hence the override)."""
        text = self.encode_text(batch["text"])
        pseudo = self.pseudo_image(text, batch["image"].shape[-2:]) if self.generator is not None else None
        image, pseudo, mask = self.augment(batch["image"], pseudo, batch["mask"])
        losses = self.compute_loss(self.segment_fused(image, pseudo), mask, text)
        self.log_train_losses(losses, image.shape[0])
        return losses["loss"]

    def compute_loss(self, outputs: Mapping[str, Tensor], mask: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        """Dice (+ BCE) on the logits + ``roi_weight`` * L1(pseudo-image, image * mask)."""
        losses = super().compute_loss(outputs, mask, text)
        if "pseudo_image" in outputs:
            losses["roi_l1"] = roi_l1_loss(outputs["pseudo_image"], outputs["image"], mask)
            losses["loss"] = losses["loss"] + self.hparams.roi_weight * losses["roi_l1"]
        return losses
