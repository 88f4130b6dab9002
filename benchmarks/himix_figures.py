"""GuideDecoder and HiMix figures: parameters and FLOPs at 224, and text vs swapped-text Dice on the synthetic data.

    PYTHONPATH=. python benchmarks/himix_figures.py            # writes docs/benchmarks/himix.md
    PYTHONPATH=. python benchmarks/himix_figures.py --quick    # short smoke run, same tables
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import langseg
from benchmarks.common import fit_and_test, machine
from langseg.blocks.text_encoder import TINY_BERT_DIR
from langseg.models import GuideDecoder, HiMix
from langseg.profiling import count_macs, count_parameters

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "himix.md"
TEXT = ["one lesion in the left lung", "two lesions in the right lower zone"]


def bert_base_like_folder(root: Path) -> Path:
    """A random 12-layer, 768-d BERT (BERT-base / CXR-BERT shape) with the tiny vocabulary, saved to ``root``."""
    from transformers import BertConfig, BertModel

    config = json.loads((TINY_BERT_DIR / "config.json").read_text())
    config.update(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    torch.manual_seed(0)
    BertModel(BertConfig(**config)).save_pretrained(root)
    for name in ("vocab.txt", "tokenizer_config.json"):
        (root / name).write_text((TINY_BERT_DIR / name).read_text())
    return root


def cost_row(label: str, model: GuideDecoder, size: int) -> str:
    model.eval()
    image = torch.rand(1, 1, size, size)
    text = model.encode_text(TEXT[:1])
    macs = count_macs(lambda: model(image, text))
    trainable = count_parameters(model, trainable_only=True)
    frozen = sum(p.numel() for p in model.text_encoder.parameters())
    decoder = trainable - count_parameters(model.net.encoder)
    return (f"| {label} | {size}² | {trainable / 1e6:.2f} | {decoder / 1e6:.2f} | {frozen / 1e6:.2f} | "
            f"{macs / 1e9:.2f} |")


def cost_table(quick: bool) -> list[str]:
    rows = ["| model (image encoder, text encoder) | input | trainable M | decoder+head M | frozen text M | GFLOPs |",
            "|---|---|---|---|---|---|"]
    backbone = "convnext_atto" if quick else "convnext_tiny"
    for cls in (GuideDecoder, HiMix):
        rows.append(cost_row(f"{cls.__name__} ({backbone}, minilm 384-d, 6 layers)", cls(encoder_name=backbone), 224))
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(bert_base_like_folder(Path(tmp)))
        for cls in (GuideDecoder, HiMix):
            rows.append(cost_row(f"{cls.__name__} ({backbone}, random 768-d 12-layer BERT)",
                                 cls(encoder_name=backbone, text_encoder=folder), 224))
    for cls in (GuideDecoder, HiMix):
        rows.append(cost_row(f"{cls.__name__} (convnext_atto, minilm)", cls(encoder_name="convnext_atto"), 64))
    return rows


def training_table(epochs: int, num_train: int) -> list[str]:
    rows = ["| model (convnext_atto, minilm) | epochs | test Dice | test mIoU | Dice, swapped text | fit s |",
            "|---|---|---|---|---|---|"]
    for name in ("guidedecoder_small", "himix_small"):  # convnext_atto, minilm, AdamW 1e-3, no schedule
        torch.manual_seed(0)
        model = langseg.create_model(name)
        res = fit_and_test(model, max_epochs=epochs, num_train=num_train, num_val=64, num_test=256, batch_size=32,
                           num_workers=0)
        rows.append(f"| {type(model).__name__} | {epochs} | {res['test/dice']:.3f} | {res['test/miou']:.3f} | "
                    f"{res['test/dice_swapped_text']:.3f} | {res['fit_seconds']:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small backbone and a short training run")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=1024)
    args = parser.parse_args()
    epochs, num_train = (1, 128) if args.quick else (args.epochs, args.num_train)
    command = "PYTHONPATH=. python benchmarks/himix_figures.py " + " ".join(sys.argv[1:])
    lines = ["# GuideDecoder and HiMix: cost and text adherence", "",
             f"Machine: {machine()}  ", f"Command: `{command.strip()}`", "",
             "## Parameters and FLOPs (1 multiply-add = 1 FLOP; the frozen text encoder is not counted in FLOPs)", ""]
    lines += cost_table(args.quick)
    lines += ["", f"## Synthetic referring data (64x64, {num_train} training images, batch 32, AdamW 1e-3, "
              "Dice + BCE; both models on the same small backbone and budget)", ""]
    lines += training_table(epochs, num_train)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if not args.quick:
        OUT.write_text(text)


if __name__ == "__main__":
    main()
