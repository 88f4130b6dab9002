"""Lightning callbacks shared by every method."""
from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger("langseg")


class FitSummary(L.Callback):
    """Logs, after ``fit``, the wall time and the last validation Dice/mIoU (per-image and pooled)."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        shown = ", ".join(f"{k}={float(metrics[k]):.4f}" for k in
                          ("val/dice", "val/miou", "val/dice_pooled", "val/miou_pooled") if k in metrics)
        log.info("fit finished in %.1f s after %d steps: %s", time.perf_counter() - self._start,
                 trainer.global_step, shown or "no validation metrics")
