"""``langseg compare``: train and test several configs on the same data, then tabulate and plot them."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from langseg.callbacks import plot_training_curves
from langseg.files import atomic_write, atomic_write_text
from langseg.lightning_cli import build_cli
from langseg.profiling import count_macs, count_parameters

log = logging.getLogger("langseg")

COLUMNS = [("config", "config"), ("model", "model"), ("params_m", "params (M)"), ("gflops", "GFLOPs"),
           ("fit_seconds", "train time (s)"), ("dice", "Dice"), ("miou", "mIoU"), ("dice_pooled", "Dice pooled"),
           ("miou_pooled", "mIoU pooled"), ("dice_swapped_text", "Dice, swapped text"),
           ("dice_no_text", "Dice, no text")]
SCORES = ("dice", "miou", "dice_pooled", "miou_pooled", "dice_swapped_text", "dice_no_text")


def inference_macs(model: torch.nn.Module, image: torch.Tensor, text: str) -> int:
    """Multiply-adds of ``model``'s inference forward pass on ``image`` with ``text`` encoded beforehand (the text
    encoder's share left out); the model is back in training mode afterwards."""
    model.eval()  # the inference graph: training-only heads off
    with torch.no_grad():
        features = model.encode_text([text]) if model.use_text else None
        macs = count_macs(lambda: model(image, features))
    model.train()  # fit() keeps the mode it finds: back to training mode (BatchNorm, dropout)
    return macs


def run_config(config: str, run_dir: Path, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Fit then test one config (CLI arguments ``extra_args`` appended) with its outputs under ``run_dir``;
    returns one table row."""
    cli = build_cli(["--config", config, "--trainer.default_root_dir", str(run_dir), *extra_args], run=False)
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    dm.setup("fit")
    sample = dm.dataset("val")[0]
    image = sample["image"].unsqueeze(0)
    macs = inference_macs(model, image, sample["text"])
    start = time.perf_counter()
    trainer.fit(model, dm)
    fit_seconds = time.perf_counter() - start
    metrics_csv = getattr(getattr(trainer.logger, "experiment", None), "metrics_file_path", None)
    ckpt = "best" if getattr(trainer.checkpoint_callback, "best_model_path", "") else None
    (result,) = trainer.test(model, dm, ckpt_path=ckpt, verbose=False)
    return {"config": config, "model": type(model).__name__, "params_m": count_parameters(model) / 1e6,
            "gflops": macs / 1e9, "image_size": int(image.shape[-1]), "fit_seconds": fit_seconds,
            "metrics_csv": str(metrics_csv) if metrics_csv else "",
            **{k.removeprefix("test/"): float(v) for k, v in result.items()}}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = ""
    for row in rows:
        cells = ["-" if row.get(key) is None else f"{row[key]:.4f}" if key in SCORES
                 else f"{row[key]:.2f}" if isinstance(row[key], float) else f"`{row[key]}`" if key == "config"
                 else str(row[key]) for key, _ in COLUMNS]
        body += "| " + " | ".join(cells) + " |\n"
    return head + body


def bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [Path(r["config"]).stem for r in rows]
    x = torch.arange(len(rows)).numpy()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows)), 3.2))
    for k, (key, label) in enumerate((("dice", "Dice"), ("miou", "mIoU"), ("dice_swapped_text", "Dice, swapped text"))):
        ax.bar(x + (k - 1) * 0.27, [r[key] for r in rows], width=0.27, label=label)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def compare(configs: Sequence[str], output_dir: str | Path, extra_args: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run every config, then write ``comparison.md``, ``comparison.json``, ``comparison.png`` (bar chart) and
    ``curves.png`` (every run's training loss and validation loss and Dice in one figure)."""
    output_dir = Path(output_dir)
    rows = []
    for config in configs:
        log.info("compare: %s", config)
        rows.append(run_config(config, output_dir / Path(config).stem, extra_args))
    size = rows[0]["image_size"] if rows else 0
    note = (f"\nGFLOPs: multiply-adds of one forward pass at {size}x{size}, text encoder excluded. "
            f"Params exclude the text encoder. Dice/mIoU are per-image means; *swapped text*: each image segmented "
            f"with another image's (different) text; *no text*: with the empty text; see docs/metrics.md.\n")
    atomic_write_text(output_dir / "comparison.md", markdown_table(rows) + note)
    atomic_write_text(output_dir / "comparison.json", json.dumps(rows, indent=2) + "\n")
    bar_chart(rows, output_dir / "comparison.png")
    runs = {Path(r["config"]).stem: Path(r["metrics_csv"]) for r in rows if r["metrics_csv"]}
    if runs and all(p.is_file() for p in runs.values()):
        plot_training_curves(runs, output_dir / "curves.png")
    return rows
