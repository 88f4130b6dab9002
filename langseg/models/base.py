"""``LanguageGuidedSegmenter``: the shared LightningModule every method subclasses.

A method builds its plain network as ``self.net`` (``net(image, text) -> {"logits": ..., ...}``), owns
its loss (``compute_loss``) and its defaults (optimiser, schedule, training-time augmentation). The base
owns text encoding (with the frozen-feature cache), the train/val/test/predict steps, Dice/IoU metrics
(per-image and pooled), the text-robustness protocols of the test step (swapped, neutral and
alternative texts) and the optimiser wiring.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Literal, Mapping

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from langseg.blocks.text_encoder import TextEncoder, TextFeatures
from langseg.data.datasets import image_array, model_input
from langseg.errors import ConfigError
from langseg.losses import bce_loss, dice_loss
from langseg.metrics import SegmentationMetrics

TEXT_ENCODER_PREFIX = "text_encoder."
NEUTRAL_TEXT = ""  # the text of test/dice_no_text: the tokenizer's special tokens alone
FUSABLE_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)


def use_fused_step(optimizer: torch.optim.Optimizer) -> bool:
    """Switches an Adam/AdamW whose ``fused`` and ``foreach`` were left unset to its fused kernel (one kernel for
    every parameter's update, on CPU and CUDA; torch picks the slower ``foreach`` or per-parameter loop otherwise).
    The update is the same algorithm; returns whether the optimiser was switched."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    if not isinstance(optimizer, FUSABLE_OPTIMIZERS):
        return False
    groups = optimizer.param_groups
    params = [p for group in groups for p in group["params"]]
    supported = _get_fused_kernels_supported_devices()
    if any(g.get("fused") is not None or g.get("foreach") is not None or g.get("differentiable") for g in groups) or \
            not all(p.device.type in supported and p.is_floating_point() for p in params):
        return False
    for group in groups:
        group["fused"] = True
    optimizer.defaults["fused"] = True
    return True


def adamw(lr: float, weight_decay: float = 1e-2) -> OptimizerCallable:
    """AdamW over the parameters it is given, at ``lr`` (an ``optimizer`` argument for Python use)."""
    return partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay)


NOT_HYPERPARAMETERS = ("optimizer", "lr_scheduler", "augmentation")  # callables/modules: the CLI's config.yaml keeps them


class LanguageGuidedSegmenter(L.LightningModule):
    """Base module: ``forward(image (B,C,H,W), text: TextFeatures | None) -> {"logits": (B,1,H,W), ...}``.

    Subclasses build ``self.net`` and may set ``text_padding = "max_length"`` (a fixed number of tokens),
    ``text_hidden_states = True`` (every encoder layer), ``requires_text = True`` (no image-only mode)
    and ``net_inputs`` (batch keys that ``transform_train_batch`` adds and the network reads).

    Args:
        in_channels: image channels (the CLI links it to ``data.in_channels``).
        use_text: False builds no text encoder; the network sees ``text=None``.
        text_encoder: ``"minilm"`` (packaged), ``"tiny"`` (tests) or a local transformers folder.
        freeze_text_encoder: keep the text encoder fixed and cache each distinct text's features.
        max_text_length: tokens kept per text (longer texts are truncated with a warning).
        text_cache_mb: most MiB of frozen text features kept (least recently used dropped first; None: no bound).
        text_cache_dtype: how cached text features are stored (``"float16"`` halves the memory; returned as fp32).
        dice_weight, bce_weight: weights of the default Dice + BCE loss.
        threshold: probability above which a pixel is foreground (metrics, predictions).
        optimizer: builds the optimiser from the trainable parameters (``--model.optimizer``).
        lr_scheduler: builds a scheduler from the optimiser (``--model.lr_scheduler``); True = the method's paper
            schedule (``default_lr_scheduler``), None or False = none.
        augmentation: training-time batch transform ``augmentation(image, mask, *aligned) -> (image, mask,
            *aligned)``; True = the method's paper default (``default_augmentation``), False = none.
        fused_optimizer: step Adam/AdamW with their fused kernel (``use_fused_step``).
    """

    paper: str = ""  # the method's publication, shown by ``langseg list-models``
    text_padding: Literal["longest", "max_length"] = "longest"
    text_hidden_states: bool = False
    requires_text: bool = False
    net_inputs: tuple[str, ...] = ()

    def __init__(
        self,
        in_channels: int = 1,
        use_text: bool = True,
        text_encoder: str = "minilm",
        freeze_text_encoder: bool = True,
        max_text_length: int = 32,
        text_cache_mb: float | None = 512.0,
        text_cache_dtype: Literal["float16", "float32"] = "float16",
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        threshold: float = 0.5,
        optimizer: OptimizerCallable = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2),
        lr_scheduler: LRSchedulerCallable | bool | None = True,
        augmentation: nn.Module | bool = True,
        fused_optimizer: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(NOT_HYPERPARAMETERS))
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"in_channels={in_channels!r}; expected the number of image channels (>= 1)")
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"threshold={threshold!r}; expected a probability strictly between 0 and 1")
        if self.requires_text and not use_text:
            raise ConfigError(f"{type(self).__name__} cannot run without text (use_text=false); "
                              f"use the 'unet' baseline for an image-only model")
        self.in_channels = in_channels
        self.fused_optimizer = fused_optimizer
        self.use_text = use_text
        self.optimizer = optimizer
        self.lr_scheduler = self.default_lr_scheduler() if lr_scheduler is True else lr_scheduler or None
        self.augmentation = self.default_augmentation() if augmentation is True else augmentation or None
        self.text_encoder: TextEncoder | None = None
        if use_text:
            self.text_encoder = TextEncoder(text_encoder, freeze=freeze_text_encoder, max_length=max_text_length,
                                            padding=self.text_padding, output_hidden_states=self.text_hidden_states,
                                            cache_mb=text_cache_mb, cache_dtype=text_cache_dtype)
        self.val_metrics = SegmentationMetrics(threshold)
        self.test_metrics = SegmentationMetrics(threshold)
        self.test_swapped_metrics = SegmentationMetrics(threshold)
        self.test_no_text_metrics = SegmentationMetrics(threshold)
        self.test_alt_metrics: dict[str, SegmentationMetrics] = {}  # per alternative-text column, made in test_step
        self.net: nn.Module | None = None
        self.preprocessing: dict[str, Any] | None = None  # the training data's (image_size, in_channels, mean, std)

    @property
    def text_dim(self) -> int:
        """Width C of the text encoder's features (0 without text)."""
        return self.text_encoder.hidden_size if self.text_encoder is not None else 0

    @property
    def output_stride(self) -> int:
        """Input height and width must be multiples of this: the network's total stride."""
        return int(getattr(self.net, "output_stride", 1))

    def default_lr_scheduler(self) -> LRSchedulerCallable | None:
        """The method's paper schedule, used when ``lr_scheduler=True``; none by default."""
        return None

    def default_augmentation(self) -> nn.Module | None:
        """The method's paper augmentation, used when ``augmentation=True`` (called by the base ``__init__``,
        so it may read only the base's attributes, e.g. ``in_channels``); none by default."""
        return None

    def encode_text(self, texts: list[str] | None) -> TextFeatures | None:
        """Features of ``texts`` (cached when the encoder is frozen); None for an image-only model."""
        if isinstance(texts, str):
            raise ConfigError(f"texts must be a list of strings, one per image; got the single string {texts!r} "
                              f"(wrap it in a list: [{texts!r}])")
        return self.text_encoder(texts) if self.text_encoder is not None and texts is not None else None

    def forward(self, image: Tensor, text: TextFeatures | None, **net_inputs: Tensor) -> dict[str, Tensor]:
        """The network's outputs: a dict holding ``"logits"`` and whatever ``compute_loss`` needs."""
        if self.net is None:
            raise NotImplementedError(f"{type(self).__name__} must build self.net (or override forward)")
        if self.requires_text and text is None:
            raise ConfigError(f"{type(self).__name__} needs text: pass texts to segment() or use a text-labelled dataset")
        out = self.net(image, text, **net_inputs)
        return {"logits": out} if isinstance(out, Tensor) else out

    def compute_loss(self, outputs: Mapping[str, Tensor], mask: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        """Loss terms; ``"loss"`` is the total that is optimised. Default: Dice + BCE on the logits."""
        logits = outputs["logits"]
        dice, bce = dice_loss(logits, mask), bce_loss(logits, mask)
        return {"loss": self.hparams.dice_weight * dice + self.hparams.bce_weight * bce, "dice": dice, "bce": bce}

    def segment(self, image: Tensor, texts: list[str] | None = None) -> dict[str, Tensor]:
        """Encode ``texts`` and run the model on a normalised ``(B, C, H, W)`` batch; always returns a dict with
        ``"logits"``."""
        if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != self.in_channels:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ConfigError(f"image of shape {shape}; {type(self).__name__} expects a (batch, {self.in_channels}, "
                              f"height, width) tensor")
        if texts is not None and not isinstance(texts, str) and len(texts) != image.shape[0]:
            raise ConfigError(f"{len(texts)} texts for {image.shape[0]} images; expected one text per image")
        return self(image, self.encode_text(texts))

    @torch.no_grad()
    def segment_image(self, image: Any, text: str | None = None) -> np.ndarray:
        """The boolean mask ``(H, W)`` of one image (a file path, PIL image or array) at its own size.

        The image is read, converted, resized and normalised as this model's training data were
        (``self.preprocessing``, recorded in its checkpoint); the probability is resized back and cut
        at ``threshold``.
        """
        if self.preprocessing is None:
            raise ConfigError("the model has no preprocessing record (it comes from langseg.load of a checkpoint "
                              "written by langseg fit); set model.preprocessing = {'image_size': ..., "
                              "'in_channels': ..., 'mean': [...], 'std': [...]} (and optionally 'resize', "
                              "'intensity': see SegmentationDataModule.preprocessing)")
        if self.use_text and not isinstance(text, str):
            raise ConfigError(f"{type(self).__name__} segments what a text describes: pass the text as a string")
        pixels = image_array(image)
        height, width = pixels.shape[:2]
        x = model_input(pixels, self.preprocessing)
        was_training = self.training
        self.eval()
        try:
            logits = self.segment(x[None].to(self.device), [text] if self.use_text else None)["logits"]
        finally:
            self.train(was_training)
        prob = F.interpolate(torch.sigmoid(logits.float()), size=(height, width), mode="bilinear", align_corners=False)
        return (prob[0, 0] > self.hparams.threshold).cpu().numpy()

    def transform_train_batch(self, batch: dict[str, Any], text: TextFeatures | None) -> dict[str, Any]:
        """Training-time transform of a batch on the device, after text encoding: ``augmentation`` applied
        jointly to image and mask. Methods that feed the network more inputs (``net_inputs``) override it."""
        if self.augmentation is None:
            return batch
        image, mask = self.augmentation(batch["image"], batch["mask"])[:2]
        return {**batch, "image": image, "mask": mask}

    def on_train_epoch_start(self) -> None:
        self._train_foreground = torch.zeros((), device=self.device)

    def on_train_epoch_end(self) -> None:
        """Warns, after the first epoch, when every training mask was empty (nothing to learn but background)."""
        if self.current_epoch > 0 or getattr(self, "_train_foreground", None) is None:
            return
        if float(self.trainer.strategy.reduce(self._train_foreground, reduce_op="sum")) == 0:
            datamodule = getattr(self.trainer, "datamodule", None)
            dataset = datamodule.dataset("train") if hasattr(datamodule, "dataset") else None
            source = getattr(dataset, "source", "the training data")
            rank_zero_warn(f"{source}: every training mask of epoch 0 is empty, so the model can only learn to "
                           f"predict background; check the mask files")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if getattr(self, "_train_foreground", None) is not None:
            self._train_foreground += batch["mask"].detach().sum()
        text = self.encode_text(batch["text"])
        batch = self.transform_train_batch(batch, text)
        outputs = self(batch["image"], text, **{key: batch[key] for key in self.net_inputs})
        losses = self.compute_loss(outputs, batch["mask"], text)
        batch_size = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, on_step=False, on_epoch=True,
                      batch_size=batch_size)
        return losses["loss"]

    def _eval_step(self, batch: dict[str, Any], stage: str, metrics: SegmentationMetrics) -> Tensor:
        text = self.encode_text(batch["text"])
        outputs = self(batch["image"], text)
        loss = self.compute_loss(outputs, batch["mask"], text)["loss"]
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        metrics.update(outputs["logits"], batch["mask"])
        return outputs["logits"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Logits of the test images with their own text, and with the text-robustness protocols' texts:
        another sample's (``swap_text``), the neutral text ``NEUTRAL_TEXT`` and each alternative-text
        column's (``alt_texts``). An image-only model gives its one prediction for all of them."""
        logits = self._eval_step(batch, "test", self.test_metrics)

        def segmented_with(texts: list[str]) -> Tensor:
            return self.segment(batch["image"], list(texts))["logits"] if self.use_text else logits

        swapped = segmented_with(batch["swap_text"]) if "swap_text" in batch else logits
        no_text = segmented_with([NEUTRAL_TEXT] * len(batch["text"]))
        alt = {name: segmented_with(texts) for name, texts in batch.get("alt_texts", {}).items()}
        self.test_swapped_metrics.update(swapped, batch["mask"])
        self.test_no_text_metrics.update(no_text, batch["mask"])
        for name, alt_logits in alt.items():
            if name not in self.test_alt_metrics:
                self.test_alt_metrics[name] = SegmentationMetrics(self.hparams.threshold).to(self.device)
            self.test_alt_metrics[name].update(alt_logits, batch["mask"])
        return {"logits": logits, "swapped_logits": swapped, "no_text_logits": no_text, "alt_logits": alt}

    def _log_metrics(self, stage: str, metrics: SegmentationMetrics) -> dict[str, Tensor]:
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
        metrics.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self.test_alt_metrics = {}

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)
        protocols = {"test/dice_swapped_text": self.test_swapped_metrics, "test/dice_no_text": self.test_no_text_metrics,
                     **{f"test/dice@{name}": metrics for name, metrics in self.test_alt_metrics.items()}}
        for key, metrics in protocols.items():
            self.log(key, metrics.compute()["dice"])
            metrics.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        prob = torch.sigmoid(self.segment(batch["image"], batch["text"])["logits"].float())
        return {"id": batch["id"], "text": batch["text"], "orig_size": batch["orig_size"], "prob": prob,
                "mask": prob > self.hparams.threshold}

    def configure_optimizers(self) -> Any:
        """``optimizer`` over the trainable parameters (Adam/AdamW with their fused kernel unless ``fused_optimizer``
        is False or the optimiser chose ``foreach``/``fused`` itself), with ``lr_scheduler`` when one is set."""
        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad])
        if self.fused_optimizer:
            use_fused_step(optimizer)
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}

    def setup(self, stage: str) -> None:
        """Checks that the datamodule's ``image_size`` suits the network's stride, before any step runs."""
        size = getattr(self.trainer.datamodule, "image_size", None) if self._trainer is not None else None
        stride = self.output_stride
        if size is not None and size % stride:
            raise ConfigError(f"data.image_size={size} is not a multiple of {stride}, the total stride "
                              f"of {type(self).__name__}; use e.g. {size - size % stride or stride}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Records the model class; frozen text-encoder weights are not saved (they are reloaded from their folder)."""
        checkpoint["langseg_model"] = type(self).__name__
        checkpoint["langseg_model_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        preprocessing = datamodule.preprocessing() if hasattr(datamodule, "preprocessing") else self.preprocessing
        if preprocessing is not None:
            checkpoint["langseg_preprocessing"] = preprocessing
        if self.text_encoder is not None and self.text_encoder.frozen:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(TEXT_ENCODER_PREFIX)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.preprocessing = checkpoint.get("langseg_preprocessing", self.preprocessing)
        saved = checkpoint.get("langseg_model")
        if saved is not None and saved != type(self).__name__:
            raise ConfigError(f"the checkpoint holds a {saved} model, but the config builds {type(self).__name__}; "
                              f"pass a checkpoint of the same model (or the config it was trained with)")
        if self.text_encoder is not None and self.text_encoder.frozen:
            for key, value in self.text_encoder.state_dict(prefix=TEXT_ENCODER_PREFIX).items():
                checkpoint["state_dict"].setdefault(key, value)
