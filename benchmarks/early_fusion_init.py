"""Why early fusion's quick config needs ``head_prior`` (issue #17): the first batch's logits per seed, and what a
trained model's text generator outputs.

    PYTHONPATH=. python benchmarks/early_fusion_init.py
    PYTHONPATH=. python benchmarks/early_fusion_init.py --checkpoint runs/ef_no_prior/version_0/checkpoints/last.ckpt

The first table builds ``configs/early_fusion_unet.yaml`` through the CLI as ``langseg fit --seed_everything <seed>``
does, with smp's head init (``--model.init_args.head_prior null``) and with the shipped prior, and reports the mean
logit and the BCE of the first training batch in training mode. With ``--checkpoint``, the generator of that trained
model is run on a few texts: the mean input of its final Sigmoid and the pseudo-image's mean (how saturated it is)
and how much the pseudo-images of different texts differ.
"""
from __future__ import annotations

import argparse

import torch

from langseg.lightning_cli import build_cli

CONFIG = "configs/early_fusion_unet.yaml"
TEXTS = ["Lesions in the left lung only.", "Lesions in the right lung only.", "The largest lesion.",
         "The smallest lesion, lower right lung.", "Upper left lung: one opacity.", "All lesions, both lungs."]


def first_batch(seed: int, head_prior: str) -> tuple[float, float]:
    """Mean logit and BCE of the first training batch of the quick config at ``seed`` (train mode, no step)."""
    cli = build_cli(["--config", CONFIG, "--seed_everything", str(seed), "--model.init_args.head_prior", head_prior,
                     "--data.init_args.num_workers", "0", "--trainer.logger", "false"], run=False)
    model, data = cli.model.train(), cli.datamodule
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        text = model.encode_text(batch["text"])
        outputs = model(batch["image"], text)
        losses = model.compute_loss(outputs, batch["mask"], text)
    return float(outputs["logits"].mean()), float(losses["bce"])


def generator_outputs(checkpoint: str) -> dict[str, float]:
    """The trained generator on ``TEXTS``: mean Sigmoid input, mean pseudo-image, mean spread across the texts."""
    from langseg.models import EarlyFusionSegmenter

    model = EarlyFusionSegmenter.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    generator = model.net.generator
    with torch.no_grad():
        sentence = model.encode_text(TEXTS).sentence
        pre_sigmoid = generator.upsample[:-1](generator.project(sentence).view(-1, 1, generator.base_size,
                                                                                generator.base_size))
        pseudo = model.net.pseudo_image(model.encode_text(TEXTS), (64, 64))
    return {"sigmoid input mean": float(pre_sigmoid.mean()), "pseudo-image mean": float(pseudo.mean()),
            "spread across texts": float(pseudo.std(0).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--checkpoint", help="a trained early-fusion checkpoint whose generator to inspect")
    args = parser.parse_args()
    print("| seed | head init | first batch: mean logit | first batch: BCE |\n|---|---|---|---|")
    for seed in args.seeds:
        for head_prior, name in (("null", "smp's"), ("0.05", "head_prior 0.05")):
            logit, bce = first_batch(seed, head_prior)
            print(f"| {seed} | {name} | {logit:+.2f} | {bce:.2f} |")
    if args.checkpoint:
        print()
        for key, value in generator_outputs(args.checkpoint).items():
            print(f"{key}: {value:.4f}")


if __name__ == "__main__":
    main()
