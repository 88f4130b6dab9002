"""Helpers for the benchmark scripts: train a model on the embedded synthetic data and test it."""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from langseg.data import SyntheticReferringDataModule


def machine() -> str:
    """One line naming the machine and torch version, for every benchmark table."""
    cpu = platform.processor() or platform.machine()
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    return f"{dev}, torch {torch.__version__}"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the shared CPU was while a benchmark ran."""
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def write_section(path: Path, name: str, text: str) -> None:
    """Replaces the section ``name`` of the Markdown file ``path`` (between ``<!-- name -->`` and
    ``<!-- /name -->``) with ``text``, or appends it; the file is replaced atomically."""
    from langseg.files import atomic_write_text

    block = f"<!-- {name} -->\n{text.strip()}\n<!-- /{name} -->\n"
    old = path.read_text() if path.is_file() else ""
    pattern = re.compile(rf"<!-- {re.escape(name)} -->\n.*?<!-- /{re.escape(name)} -->\n", re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old + ("\n" if old else "") + block
    atomic_write_text(path, new)


def fit_and_test(model: L.LightningModule, max_epochs: int = 6, seed: int = 0, **data_kwargs: Any) -> dict[str, float]:
    """Train ``model`` on the synthetic referring data, then test; adds ``fit_seconds``."""
    L.seed_everything(seed, verbose=False)
    dm = SyntheticReferringDataModule(**data_kwargs)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, deterministic=False)
    start = time.perf_counter()
    trainer.fit(model, dm)
    elapsed = time.perf_counter() - start
    (result,) = trainer.test(model, dm, verbose=False)
    return {**{k: float(v) for k, v in result.items()}, "fit_seconds": elapsed}


class SecondEpochTimer(L.Callback):
    """Timestamps of every batch start of the second epoch, and of its end (workers warm, data cached)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.current_epoch == 1:
            self.stamps.append(time.perf_counter())

    def on_train_epoch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.current_epoch == 1:
            self.stamps.append(time.perf_counter())

    def median_step(self) -> float:
        """Median seconds from one batch start to the next (data wait, step, logging and hooks)."""
        return statistics.median(b - a for a, b in zip(self.stamps[:-1], self.stamps[1:]))


def image_benchmark_options(doc: str, images: int, quick_images: int) -> tuple[argparse.Namespace, int, int]:
    """The options of a benchmark over a folder of images (``--quick``, ``--images``, ``--repeats``, ``--output``)
    and the number of images and repeats to run: ``quick_images`` and one repeat with ``--quick``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{quick_images} images, one repeat; prints instead of writing docs")
    parser.add_argument("--images", type=int, default=images)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))
    opts = parser.parse_args()
    return opts, *((quick_images, 1) if opts.quick else (opts.images, opts.repeats))
