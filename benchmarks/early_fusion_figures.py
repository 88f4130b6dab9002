"""Early fusion figures: generator overhead, U-Net with vs without text, text vs swapped text, pseudo-image figure.

    PYTHONPATH=. python benchmarks/early_fusion_figures.py            # writes docs/benchmarks/early_fusion.md
                                                                      # and docs/figures/early_fusion_pseudo_images.png
    PYTHONPATH=. python benchmarks/early_fusion_figures.py --quick    # short smoke run, figure to the temp folder
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import langseg
from benchmarks.common import fit_and_test, machine
from langseg.data import SyntheticReferringDataModule
from langseg.models import EarlyFusionSegmenter
from langseg.profiling import count_macs, count_parameters

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks" / "early_fusion.md"
FIGURE = ROOT / "docs" / "figures" / "early_fusion_pseudo_images.png"
TEXTS = ("One infected area in the upper left lung.", "One infected area in the lower right lung.")
UNET = {"arch": "Unet", "encoder_name": "resnet18", "decoder_channels": (128, 64, 32, 16, 8)}


def cost_table() -> list[str]:
    rows = ["| model (smp Unet, resnet18, minilm 384-d) | input | trainable M | generator M | GFLOPs |",
            "|---|---|---|---|---|"]
    for size in (64, 224):
        for use_text in (False, True):
            model = EarlyFusionSegmenter(use_text=use_text, **UNET).eval()
            image = torch.rand(1, 1, size, size)
            text = model.encode_text(TEXTS[:1])
            macs = count_macs(lambda: model(image, text))  # noqa: B023
            gen = count_parameters(model.net.generator) if use_text else 0
            label = "early fusion (image + pseudo-image)" if use_text else "plain U-Net (use_text: false)"
            rows.append(f"| {label} | {size}² | {count_parameters(model, trainable_only=True) / 1e6:.4f} | "
                        f"{gen / 1e6:.4f} | {macs / 1e9:.3f} |")
    return rows


ARMS = (("without text (same smp Unet)", {"use_text": False}),
        ("early fusion, ROI L1 weight 0.1 (paper)", {"roi_weight": 0.1}),
        ("early fusion, ROI L1 weight 1.0", {"roi_weight": 1.0}))


@torch.no_grad()
def pseudo_contrast(model: EarlyFusionSegmenter, num: int = 256) -> tuple[float, float]:
    """Mean pseudo-image value inside and outside the true mask over ``num`` test images (own texts)."""
    model.eval()
    ds = SyntheticReferringDataModule(num_test=num, num_workers=0).dataset("test")
    items = [ds[i] for i in range(num)]
    image, mask = torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])
    pseudo = model.segment(image, [it["text"] for it in items])["pseudo_image"]
    return float(pseudo[mask > 0].mean()), float(pseudo[mask == 0].mean())


def training_table(epochs: int, num_train: int) -> tuple[list[str], list[tuple[str, EarlyFusionSegmenter]]]:
    rows = ["| U-Net (resnet18) | epochs | test Dice | test mIoU | Dice, swapped text | pseudo-image in / out of mask | fit s |",
            "|---|---|---|---|---|---|---|"]
    results, text_models = [], []
    for label, kwargs in ARMS:
        torch.manual_seed(0)
        model = langseg.create_model("early_fusion_small", **kwargs)  # UNET, Dice + BCE, AdamW 1e-3, no schedule
        res = fit_and_test(model, max_epochs=epochs, num_train=num_train, num_val=64, num_test=256, batch_size=32,
                           num_workers=0)
        results.append(res)
        swapped, contrast = "n/a (no text)", "n/a"
        if model.use_text:
            swapped = f"{res['test/dice_swapped_text']:.3f}"
            contrast = "{:.3f} / {:.3f}".format(*pseudo_contrast(model))
            text_models.append((label, model))
        rows.append(f"| {label} | {epochs} | {res['test/dice']:.3f} | {res['test/miou']:.3f} | {swapped} | {contrast} | "
                    f"{res['fit_seconds']:.0f} |")
    gain_dice = 100 * (results[1]["test/dice"] - results[0]["test/dice"])
    gain_miou = 100 * (results[1]["test/miou"] - results[0]["test/miou"])
    rows += ["", f"Early fusion (paper's ROI weight) minus no text: {gain_dice:+.2f} Dice points, {gain_miou:+.2f} mIoU "
             "points (paper, U-Net on its data: +3.62 Dice, +4.01 mIoU)."]
    return rows, text_models


@torch.no_grad()
def pseudo_image_figure(models: list[tuple[str, EarlyFusionSegmenter]], path: Path) -> None:
    """Per model: image, then pseudo-image and prediction for each of two texts, on one test image."""
    dm = SyntheticReferringDataModule(num_test=64, num_workers=0)
    images = torch.stack([dm.dataset("test")[i]["image"] for i in range(64)])
    outs = []
    for _, model in models:
        model.eval()
        outs.append([model.segment(images, [t] * len(images)) for t in TEXTS])
    areas = torch.stack([(o["logits"] > 0).float().sum((1, 2, 3)) for out in outs for o in out]).min(0).values
    i = int(areas.argmax())  # the image where every model predicts something for both texts
    fig, axes = plt.subplots(len(models), 5, figsize=(12.5, 3.1 * len(models)), squeeze=False)
    for row, ((label, _), out) in enumerate(zip(models, outs)):
        panels = [(f"{label}\nimage", images[i, 0], "gray")]
        for text, o in zip(TEXTS, out):
            short = text.removeprefix("One infected area in the ").removesuffix(".")
            panels += [(f"pseudo-image:\n{short}", o["pseudo_image"][i, 0], "magma"),
                       (f"prediction:\n{short}", torch.sigmoid(o["logits"][i, 0]), "gray")]
        for ax, (title, img, cmap) in zip(axes[row], panels):
            ax.imshow(img.cpu().numpy(), cmap=cmap, vmin=0 if cmap == "magma" else None,
                      vmax=1 if cmap == "magma" else None)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one epoch on 128 images; writes only a figure to the temp folder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--num-train", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs, num_train = (1, 128) if args.quick else (args.epochs, args.num_train)
    command = "PYTHONPATH=. python benchmarks/early_fusion_figures.py " + " ".join(sys.argv[1:])
    lines = ["# Early fusion: cost, with vs without text, text adherence", "",
             f"Machine: {machine()}  ", f"Command: `{command.strip()}`", "",
             "## Parameters and FLOPs (1 multiply-add = 1 FLOP; the frozen text encoder is not counted)", ""]
    lines += cost_table()
    table, models = training_table(epochs, num_train)
    lines += ["", f"## Synthetic referring data (64x64, {num_train} training images, batch 32, AdamW 1e-3, "
              "Dice + BCE (+ ROI L1 with text), joint flip/affine augmentation; every arm the same smp Unet)", ""]
    lines += table
    lines += ["", f"Pseudo-images of the trained early-fusion models: `{FIGURE.relative_to(ROOT)}` "
              f"(texts: {' / '.join(repr(t) for t in TEXTS)})."]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if not args.quick:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
    pseudo_image_figure(models, Path(tempfile.gettempdir()) / FIGURE.name if args.quick else FIGURE)


if __name__ == "__main__":
    main()
