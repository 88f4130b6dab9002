"""``LanguageGuidedSegmenter``: the shared LightningModule every method subclasses.

A method overrides ``forward(image, text)`` (and ``compute_loss`` when it has extra losses); the base
owns text encoding (with the frozen-feature cache), the train/val/test/predict steps, Dice/IoU
metrics (per-image and pooled), the swapped-text adherence metric and the default optimiser.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

import lightning as L
import torch
from torch import Tensor

from langseg.blocks.text_encoder import TextEncoder, TextFeatures
from langseg.errors import ConfigError
from langseg.losses import bce_loss, dice_loss
from langseg.metrics import SegmentationMetrics

TEXT_ENCODER_PREFIX = "text_encoder."


class LanguageGuidedSegmenter(L.LightningModule):
    """Base module: ``forward(image (B,C,H,W), text: TextFeatures | None) -> logits (B,1,H,W)`` or a dict.

    A dict output must hold ``"logits"``; other entries (pixel features, reconstructions) reach
    ``compute_loss``. Subclasses may set ``text_padding = "max_length"`` when they need a fixed
    number of tokens and ``text_hidden_states = True`` when they read every encoder layer.
    """

    text_padding: Literal["longest", "max_length"] = "longest"
    text_hidden_states: bool = False
    size_divisor: int = 1  # input height/width must be a multiple of this (the network's total stride)

    def __init__(
        self,
        in_channels: int = 1,
        use_text: bool = True,
        text_encoder: str = "minilm",
        freeze_text_encoder: bool = True,
        max_text_length: int = 32,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        threshold: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.in_channels = in_channels
        self.use_text = use_text
        self.text_encoder: TextEncoder | None = None
        if use_text:
            self.text_encoder = TextEncoder(text_encoder, freeze=freeze_text_encoder, max_length=max_text_length,
                                            padding=self.text_padding, output_hidden_states=self.text_hidden_states)
        self.val_metrics = SegmentationMetrics(threshold)
        self.test_metrics = SegmentationMetrics(threshold)
        self.test_swapped_metrics = SegmentationMetrics(threshold)

    @property
    def text_dim(self) -> int:
        """Width C of the text encoder's features (0 without text)."""
        return self.text_encoder.hidden_size if self.text_encoder is not None else 0

    def encode_text(self, texts: list[str] | None) -> TextFeatures | None:
        """Features of ``texts`` (cached when the encoder is frozen); None for an image-only model."""
        return self.text_encoder(texts) if self.text_encoder is not None and texts is not None else None

    def run(self, image: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        """``forward`` with its output always as a dict holding ``"logits"``."""
        out = self(image, text)
        return {"logits": out} if isinstance(out, Tensor) else dict(out)

    def forward(self, image: Tensor, text: TextFeatures | None) -> Tensor | dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(image, text)")

    def compute_loss(self, outputs: Mapping[str, Tensor], mask: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        """Loss terms; ``"loss"`` is the total that is optimised. Default: Dice + BCE on the logits."""
        logits = outputs["logits"]
        dice, bce = dice_loss(logits, mask), bce_loss(logits, mask)
        return {"loss": self.hparams.dice_weight * dice + self.hparams.bce_weight * bce, "dice": dice, "bce": bce}

    def segment(self, image: Tensor, texts: list[str] | None = None) -> dict[str, Tensor]:
        """Encode ``texts`` and run the model; always returns a dict with ``"logits"``."""
        return self.run(image, self.encode_text(texts))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        text = self.encode_text(batch["text"])
        losses = self.compute_loss(self.run(batch["image"], text), batch["mask"], text)
        self.log_train_losses(losses, batch["image"].shape[0])
        return losses["loss"]

    def log_train_losses(self, losses: Mapping[str, Tensor], batch_size: int) -> None:
        """``train/loss`` every step (progress bar), the other terms as epoch means."""
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, on_step=False, on_epoch=True,
                      batch_size=batch_size)

    def _eval_step(self, batch: dict[str, Any], stage: str, metrics: SegmentationMetrics) -> Tensor:
        text = self.encode_text(batch["text"])
        outputs = self.run(batch["image"], text)
        loss = self.compute_loss(outputs, batch["mask"], text)["loss"]
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        metrics.update(outputs["logits"], batch["mask"])
        return outputs["logits"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        logits = swapped = self._eval_step(batch, "test", self.test_metrics)
        if self.use_text and "swap_text" in batch:
            swapped = self.segment(batch["image"], batch["swap_text"])["logits"]
        self.test_swapped_metrics.update(swapped, batch["mask"])
        return {"logits": logits, "swapped_logits": swapped}

    def _log_metrics(self, stage: str, metrics: SegmentationMetrics) -> dict[str, Tensor]:
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
        metrics.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)
        self.log("test/dice_swapped_text", self.test_swapped_metrics.compute()["dice"])
        self.test_swapped_metrics.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        prob = torch.sigmoid(self.segment(batch["image"], batch["text"])["logits"].float())
        return {"id": batch["id"], "text": batch["text"], "orig_size": batch["orig_size"], "prob": prob,
                "mask": prob > self.hparams.threshold}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW on the trainable parameters; an ``optimizer:``/``lr_scheduler:`` block in the CLI config replaces it."""
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def setup(self, stage: str) -> None:
        """Checks that the datamodule's ``image_size`` suits the network's stride, before any step runs."""
        size = getattr(self.trainer.datamodule, "image_size", None) if self._trainer is not None else None
        if size is not None and size % self.size_divisor:
            raise ConfigError(f"data.image_size={size} is not a multiple of {self.size_divisor}, the total stride "
                              f"of {type(self).__name__}; use e.g. {size - size % self.size_divisor or self.size_divisor}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Records the model class; frozen text-encoder weights are not saved (they are reloaded from their folder)."""
        checkpoint["langseg_model"] = type(self).__name__
        if self.text_encoder is not None and self.text_encoder.frozen:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(TEXT_ENCODER_PREFIX)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("langseg_model")
        if saved is not None and saved != type(self).__name__:
            raise ConfigError(f"the checkpoint holds a {saved} model, but the config builds {type(self).__name__}; "
                              f"pass a checkpoint of the same model (or the config it was trained with)")
        if self.text_encoder is not None and self.text_encoder.frozen:
            for key, value in self.text_encoder.state_dict(prefix=TEXT_ENCODER_PREFIX).items():
                checkpoint["state_dict"].setdefault(key, value)
