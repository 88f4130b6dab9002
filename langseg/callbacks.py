"""Lightning callbacks shared by every method."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import textwrap
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from langseg.files import BackgroundWriter, atomic_write, atomic_write_text, write_png
from langseg.metrics import confusion_counts, dice_iou, hd95

log = logging.getLogger("langseg")


def run_output_dir(trainer: L.Trainer, output_dir: str | Path | None, name: str) -> Path:
    """``output_dir`` when given, else ``<trainer.log_dir>/<name>``: the run's own folder (the logger's
    version directory, or ``default_root_dir`` without a logger, as under ``fast_dev_run``)."""
    if output_dir is not None:
        return Path(output_dir)
    return Path(trainer.log_dir or trainer.default_root_dir) / name


def with_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """``row`` followed by a dataset's extra columns; one named like a field of ``row`` becomes ``csv_<name>``."""
    return {**row, **{(f"csv_{name}" if name in row else name): value for name, value in columns.items()}}


def gather_rows(trainer: L.Trainer, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's ``rows``, once per ``(id, text)`` (the distributed sampler pads with repeats); ``rows``
    itself in a single process."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return rows
    gathered: list[list[dict[str, Any]]] = [[] for _ in range(trainer.world_size)]
    torch.distributed.all_gather_object(gathered, rows)
    return list({(r["id"], r["text"]): r for part in gathered for r in part}.values())


def _batch_columns(batch: Any, key: str, i: int) -> dict[str, str]:
    """Sample ``i``'s cells of the collated ``batch[key]`` (``{column: [cell per sample]}``)."""
    return {name: cells[i] for name, cells in batch.get(key, {}).items()} if isinstance(batch, dict) else {}


def plot_training_curves(runs: dict[str, Path], output: Path) -> Path | None:
    """``output`` (PNG): training loss per step and validation loss and Dice per epoch of one or several runs
    (``{label: metrics.csv of a CSV logger}``, one line per run); None when the files hold no such values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(rows: list[dict[str, str]], key: str, x: str) -> tuple[list[float], list[float]]:
        points = [(float(r[x]), float(r[key])) for r in rows if r.get(key) not in (None, "") and r.get(x) not in (None, "")]
        return [p[0] for p in points], [p[1] for p in points]

    tables = {}
    for label, path in runs.items():
        with Path(path).open(newline="", encoding="utf-8") as fh:
            tables[label] = list(csv.DictReader(fh))
    keys = [(key, x) for key, x in (("train/loss", "step"), ("val/loss", "epoch"), ("val/dice", "epoch"))
            if any(series(rows, key, x)[0] for rows in tables.values())]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, (key, x) in zip(axes[0], keys):
        for label, rows in tables.items():
            xs, ys = series(rows, key, x)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if len(tables) > 1:
        axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(output, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return output


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest weights.

    Lightning 2.6 rewrites ``last.ckpt`` only in a step that also saved a top-k checkpoint, so after the
    last improvement of the monitored metric it kept the best epoch's weights under the name ``last``;
    here it is refreshed after every validation (or training epoch, if that is when checkpoints are
    saved) and when training ends.
    """

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)


class FitSummary(L.Callback):
    """Logs, after ``fit``, the wall time, the last validation Dice/mIoU (per-image and pooled) and where the
    best and last checkpoints are, and plots the training curves (``curves.png`` beside ``metrics.csv``)."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        run_dir = trainer.log_dir  # a broadcast under DDP: every process must ask
        if trainer.is_global_zero:
            total = sum(p.numel() for p in pl_module.parameters())
            trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
            frozen = f" ({(total - trainable) / 1e6:.2f} M frozen)" if total > trainable else ""
            log.info("%s: %.2f M parameters%s; run folder %s", type(pl_module).__name__, total / 1e6, frozen, run_dir)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        shown = ", ".join(f"{k}={float(metrics[k]):.4f}" for k in
                          ("val/dice", "val/miou", "val/dice_pooled", "val/miou_pooled") if k in metrics)
        log.info("fit finished in %.1f s after %d steps: %s", time.perf_counter() - self._start,
                 trainer.global_step, shown or "no validation metrics")
        checkpoint = trainer.checkpoint_callback
        for kind in ("best", "last"):
            path = getattr(checkpoint, f"{kind}_model_path", "") if checkpoint is not None else ""
            if path:
                log.info("%s checkpoint: %s", kind, path)
        logger = trainer.logger
        metrics_file = getattr(getattr(logger, "experiment", None), "metrics_file_path", None)
        if isinstance(metrics_file, str):  # not under fast_dev_run, whose dummy logger answers every name
            logger.save()
            if Path(metrics_file).is_file():
                curves = plot_training_curves({type(pl_module).__name__: Path(metrics_file)},
                                              Path(metrics_file).with_name("curves.png"))
                if curves is not None:
                    log.info("training curves: %s", curves)


def _denormalized(image: Tensor) -> np.ndarray:
    """A model input ``(C, H, W)`` rescaled to uint8 ``(H, W, 3)`` for display."""
    img = image.float()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-6)
    img = img[:1].expand(3, -1, -1) if img.shape[0] != 3 else img
    return (img.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)


OVERLAY_MIN_WIDTH = 256  # small images are enlarged so that the caption stays readable
PREDICTION_TINT = np.array([0.45 * 255.0, 0.0, 0.0], dtype=np.float32)  # red, mixed 45 : 55 with the image
TINTED = (0.55 * np.arange(256)[:, None] + PREDICTION_TINT).astype(np.uint8)  # (256, 3): each level of each channel mixed


@lru_cache(maxsize=1)
def _caption_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _contour(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its border: ``mask`` less its ``width``-fold 4-connected
    erosion, outside the image counting as background (``scipy.ndimage.binary_erosion``'s, with shifted slices)."""
    inner = mask
    for _ in range(width):
        eroded = np.zeros_like(inner)
        eroded[1:-1, 1:-1] = (inner[1:-1, 1:-1] & inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2]
                              & inner[1:-1, 2:])
        inner = eroded
    return mask & ~inner


def overlay_image(base: Image.Image, mask: np.ndarray, caption: str, truth: np.ndarray | None = None) -> Image.Image:
    """``base`` with the predicted mask tinted red and outlined in yellow, the ground truth (when given)
    outlined in green, and ``caption`` wrapped in a band underneath; images narrower than 256 px are
    enlarged by an integer factor first."""
    scale = max(1, math.ceil(OVERLAY_MIN_WIDTH / base.width))
    if scale > 1:
        base = base.resize((base.width * scale, base.height * scale), Image.NEAREST)
        mask = mask.repeat(scale, 0).repeat(scale, 1)
        truth = truth.repeat(scale, 0).repeat(scale, 1) if truth is not None else None
    rgb = np.asarray(base.convert("RGB"))
    band_lines = textwrap.wrap(caption, width=max(10, rgb.shape[1] // 6)) or [""]
    band = 14 * len(band_lines) + 6
    canvas = np.zeros((rgb.shape[0] + band, rgb.shape[1], 3), dtype=np.uint8)  # the caption band stays black
    picture = canvas[:rgb.shape[0]]
    tinted = np.stack([TINTED[:, c].take(rgb[..., c]) for c in range(3)], axis=-1)  # table lookups, no float image
    np.copyto(picture, np.where(mask[..., None], tinted, rgb))
    picture[_contour(mask, scale)] = (255, 230, 0)
    if truth is not None:
        picture[_contour(truth, scale)] = (0, 220, 0)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for k, line in enumerate(band_lines):
        draw.text((3, rgb.shape[0] + 3 + 14 * k), line, fill="white", font=_caption_font())
    return image


def _masks_at_original_size(prob: Tensor, sizes: Tensor, threshold: float,
                            mode: str = "bilinear") -> list[np.ndarray]:
    """Boolean ``(h, w)`` masks of a batch of probabilities ``(B, 1, S, S)``, each resized (``mode``) to its
    image's ``(h, w)`` in ``sizes`` and cut at ``threshold``: one interpolation for the batch when every image
    has the same size."""
    sizes = [tuple(s) for s in sizes.tolist()]
    corners = {"align_corners": False} if mode == "bilinear" else {}
    if len(set(sizes)) == 1:
        prob = F.interpolate(prob.float(), size=sizes[0], mode=mode, **corners)
        return list((prob[:, 0] > threshold).cpu().numpy())
    return [(F.interpolate(prob[i:i + 1].float(), size=size, mode=mode, **corners)[0, 0] > threshold).cpu().numpy()
            for i, size in enumerate(sizes)]


class PredictionWriter(BasePredictionWriter):
    """Writes, for every predicted sample, ``masks/<id>.png`` (0/255, the original image's size) and
    ``overlays/<id>.png`` (original image, prediction in red with a yellow contour, the ground-truth
    contour in green when the split has masks, the text as caption) under ``output_dir``
    (default: the run's ``predictions/`` folder, beside its checkpoints), and ``predictions.csv``: one
    row per sample (id, text, the data's extra columns such as ``category``, mask file, foreground pixels).

    The masks are cut on the prediction loop; reading the original images, drawing the overlays and writing
    the files run on a writer thread (``files.BackgroundWriter``, at most ``max_pending`` samples waiting), so
    the model does not wait for the disk. A file that cannot be written stops the run with an error naming it
    (raised at the next batch or at the end). Each file is written to a temporary name and renamed, so a crash
    leaves no half-written file and a second run overwrites the first cleanly. Masks and overlays are PNGs
    (``files.write_png``) deflated at zlib level ``mask_compress_level`` and ``overlay_compress_level`` (0-9; 1:
    fast, larger files; 9: smallest; the pixels are the same).
    """

    def __init__(self, output_dir: str | None = None, overlay: bool = True, max_pending: int = 64,
                 overlay_compress_level: int = 1, mask_compress_level: int = 1) -> None:
        super().__init__(write_interval="batch")
        self.output_dir_arg = output_dir
        self.output_dir: Path | None = None  # set in setup(), once the run's folder is known
        self.overlay = overlay
        self.rows: list[dict[str, Any]] = []
        self.max_pending = max_pending
        self.overlay_compress_level = overlay_compress_level
        self.mask_compress_level = mask_compress_level
        self._writer: BackgroundWriter | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.output_dir = run_output_dir(trainer, self.output_dir_arg, "predictions")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []
        self._writer = BackgroundWriter(self.max_pending)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()  # every file written, or the first write error raised here
        rows = gather_rows(trainer, self.rows)
        if trainer.is_global_zero:
            write_csv(self.output_dir / "predictions.csv", rows)
            log.info("predictions written to %s", self.output_dir)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._writer is not None:  # the loop stopped on an error of its own: that error is the one shown
            self._writer.close(raise_error=False)
            self._writer = None

    def _write_sample(self, sample_id: str, mask: np.ndarray, text: str, path: str, image: Tensor,
                      truth: np.ndarray | None) -> None:
        write_png(self.output_dir / "masks" / f"{sample_id}.png", mask.astype(np.uint8) * 255, self.mask_compress_level)
        if not self.overlay:
            return
        if path:
            with Image.open(path) as img:
                base = img.convert("RGB")
        else:
            base = Image.fromarray(_denormalized(image)).resize(mask.shape[::-1], Image.BILINEAR)
        write_png(self.output_dir / "overlays" / f"{sample_id}.png", np.asarray(overlay_image(base, mask, text, truth)),
                  self.overlay_compress_level)

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._writer is None:  # write_on_batch_end called outside trainer.predict
            self._writer = BackgroundWriter(self.max_pending)
        threshold = float(pl_module.hparams.get("threshold", 0.5))
        masks = _masks_at_original_size(prediction["prob"], prediction["orig_size"], threshold)
        truths: list[np.ndarray | None] = [None] * len(masks)
        if isinstance(batch, dict) and "mask" in batch and self.overlay:
            truths = _masks_at_original_size(batch["mask"], prediction["orig_size"], 0.5, mode="nearest")
        paths = batch.get("image_path", [""] * len(masks))
        images = batch["image"].cpu() if self.overlay and not all(paths) else [None] * len(masks)
        for i, sample_id in enumerate(prediction["id"]):
            self.rows.append(with_columns({"id": sample_id, "text": prediction["text"][i], "mask": f"masks/{sample_id}.png",
                                           "foreground_pixels": int(masks[i].sum())}, _batch_columns(batch, "columns", i)))
            self._writer.submit(partial(self._write_sample, sample_id, masks[i], prediction["text"][i], paths[i],
                                        images[i], truths[i]))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as a CSV with a header (the first row's keys; just ``id`` when there are none), atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["id"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def dice_by_category(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{column: {value: {"dice": mean per-image Dice, "images": count}}}`` over rows holding ``categories``
    (``{column: value}``), values sorted."""
    groups: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for column, value in row["categories"].items():
            groups.setdefault(column, {}).setdefault(value, []).append(row["dice"])
    return {column: {value: {"dice": sum(d) / len(d), "images": len(d)} for value, d in sorted(values.items())}
            for column, values in groups.items()}


class TestReport(L.Callback):
    """Saves ``<output_dir>/test_summary.json`` and ``test_per_image.csv`` after ``langseg test``
    (default ``output_dir``: the run's ``results/`` folder).

    Per image: the data's extra columns (e.g. ``category``, ``text_short``), Dice, IoU, Dice with the swapped
    text, with the neutral text and with each alternative-text column (``dice@<column>``), HD95 (pixels,
    MONAI definition; NaN when exactly one of prediction and mask is empty) and the TP/FP/FN counts. The
    summary holds the per-image means, the pooled Dice/mIoU (from the summed counts), the mean HD95 over
    images where it is defined, the protocols' Dice and, for each category column, the Dice and number of
    images per value (``dice_by_category``, also logged as ``test/dice_by_category/<column>=<value>``): the same
    definitions as the logged ``test/*`` metrics (docs/metrics.md).
    """

    __test__ = False  # not a pytest class

    def __init__(self, output_dir: str | None = None, hd95: bool = True) -> None:
        self.output_dir_arg = output_dir
        self.output_dir: Path | None = None  # set in setup(), once the run's folder is known
        self.hd95 = hd95
        self.rows: list[dict[str, Any]] = []
        self.protocols: list[str] = []  # the per-image Dice keys of the text-robustness protocols

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.output_dir = run_output_dir(trainer, self.output_dir_arg, "results")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        threshold = float(pl_module.hparams.get("threshold", 0.5))
        target = batch["mask"] > 0.5

        def per_image_dice(logits: Tensor) -> Tensor:
            return dice_iou(*confusion_counts(torch.sigmoid(logits.float()) > threshold, target))[0]

        pred = torch.sigmoid(outputs["logits"].float()) > threshold
        tp, fp, fn = confusion_counts(pred, target)
        dice, iou = dice_iou(tp, fp, fn)
        protocols = {"dice_swapped_text": per_image_dice(outputs["swapped_logits"]),
                     "dice_no_text": per_image_dice(outputs["no_text_logits"]),
                     **{f"dice@{name}": per_image_dice(logits) for name, logits in outputs["alt_logits"].items()}}
        self.protocols = list(protocols)
        pred_np, target_np = pred.cpu().numpy(), target.cpu().numpy()
        for i, sample_id in enumerate(batch["id"]):
            row = {
                "id": sample_id, "text": batch["text"][i], "swap_text": batch.get("swap_text", [""] * len(pred))[i],
                "dice": float(dice[i]), "iou": float(iou[i]), **{key: float(values[i]) for key, values in protocols.items()},
                "hd95": hd95(pred_np[i, 0], target_np[i, 0]) if self.hd95 else float("nan"),
                "tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i]),
            }
            self.rows.append({**with_columns(row, _batch_columns(batch, "columns", i)),
                              "categories": _batch_columns(batch, "categories", i)})

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = gather_rows(trainer, self.rows)  # every process holds every row: the same values everywhere
        finite = [r["hd95"] for r in rows if math.isfinite(r["hd95"])]
        if self.hd95 and finite:
            pl_module.log("test/hd95", sum(finite) / len(finite))
        by_category = dice_by_category(rows)
        for column, values in by_category.items():
            for value, entry in values.items():
                pl_module.log(f"test/dice_by_category/{column}={value}", entry["dice"])
        if trainer.is_global_zero:
            self._write(rows, by_category, pl_module)

    def _write(self, rows: list[dict[str, Any]], by_category: dict[str, dict[str, dict[str, float]]],
               pl_module: L.LightningModule) -> None:
        n = max(len(rows), 1)
        tp, fp, fn = (torch.tensor(sum(r[k] for r in rows)) for k in ("tp", "fp", "fn"))
        dice_pooled, iou_pooled = dice_iou(tp, fp, fn)
        finite = [r["hd95"] for r in rows if math.isfinite(r["hd95"])]
        summary = {
            "model": type(pl_module).__name__, "split": "test", "images": len(rows),
            "dice": sum(r["dice"] for r in rows) / n, "miou": sum(r["iou"] for r in rows) / n,
            "dice_pooled": float(dice_pooled), "miou_pooled": float(iou_pooled),
            "hd95": sum(finite) / len(finite) if finite else float("nan"), "hd95_defined_images": len(finite),
            **{key: sum(r[key] for r in rows) / n for key in self.protocols},
            "dice_by_category": by_category,
        }
        if rows and not any(r["tp"] + r["fn"] for r in rows):
            dataset = getattr(getattr(pl_module.trainer, "datamodule", None), "datasets", {}).get("test")
            source = getattr(getattr(dataset, "dataset", dataset), "source", "the test split")
            log.warning("%s: every mask of the %d test images is empty; Dice is 1 only where the prediction is "
                        "empty too, so these metrics say nothing about lesions", source, len(rows))
        atomic_write_text(self.output_dir / "test_summary.json", json.dumps(summary, indent=2) + "\n")
        write_csv(self.output_dir / "test_per_image.csv", [{k: v for k, v in r.items() if k != "categories"} for r in rows])
        shown = {**{k: v for k, v in summary.items() if isinstance(v, float)},
                 **{f"dice_by_category/{column}={value}": entry["dice"] for column, values in by_category.items()
                    for value, entry in values.items()}}
        log.info("test report written to %s: %s", self.output_dir, ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))


class PerformanceOptions(L.Callback):
    """Opt-in speed options: channels-last memory format for the model and its images, and ``torch.compile``.

    ``compile`` wraps the model's ``forward`` (the text encoder and the Lightning loop stay eager).
    Mixed precision is Lightning's own: ``--trainer.precision bf16-mixed``.
    """

    def __init__(self, channels_last: bool = False, compile: bool = False) -> None:
        self.channels_last = channels_last
        self.compile = compile

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.compile and not getattr(pl_module, "_langseg_compiled", False):
            pl_module.forward = torch.compile(pl_module.forward)
            pl_module._langseg_compiled = True

    def _convert(self, batch: Any) -> None:
        if self.channels_last and isinstance(batch, dict) and batch.get("image") is not None:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._convert(batch)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._convert(batch)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._convert(batch)

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        self._convert(batch)
