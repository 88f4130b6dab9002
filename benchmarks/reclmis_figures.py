"""RecLMIS figures: inference/training parameters and FLOPs at 224x224, CPU latency, text vs swapped-text Dice.

    PYTHONPATH=. python benchmarks/reclmis_figures.py            # full run, writes docs/benchmarks/reclmis.md
    PYTHONPATH=. python benchmarks/reclmis_figures.py --quick    # short smoke run (fewer epochs and timings);
                                                                 # prints only

FLOPs follow the papers' convention (``langseg.profiling.count_macs``: one multiply-add = one FLOP); the
text encoder is left out of every parameter and FLOP count, as in the paper. The inference graph is
``model.net`` in eval mode (it runs only ``RecLMISNet.inference_modules``), its parameters are
``model.net.inference_parameters()``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import langseg
from benchmarks.common import fit_and_test, machine
from langseg.models import RecLMIS
from langseg.profiling import count_macs, count_parameters

PAPER = {"inf_params": 23.7, "inf_flops": 24.1, "train_params": 74.2, "train_flops": 36.62, "latency_ms": 20.3}
NOTE = "Bilateral pulmonary infection, two infected areas, middle left lung and upper right lung."
OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "reclmis.md"


def _millions(module: nn.Module) -> float:
    return count_parameters(module) / 1e6


def complexity(size: int = 224) -> tuple[list[tuple[str, float, float | None]], dict[str, float]]:
    """Per-part parameters (M) and FLOPs (G) of the paper-width model on one ``size`` x ``size`` RGB image."""
    model = RecLMIS(in_channels=3, widths=(64, 128, 256, 512, 512), num_heads=8, recon_depth=3)
    net = model.net
    text = model.encode_text([NOTE])
    image = torch.randn(1, 3, size, size)
    net.eval()  # the inference graph: encoder, text-to-vision half of CI, decoder
    inf_macs = count_macs(lambda: net(image, text)) / 1e9
    inf_params = sum(p.numel() for p in net.inference_parameters()) / 1e6
    net.train()
    pair = torch.tensor([0, 0])  # the contrastive loss needs a batch; report per image
    train_macs = count_macs(lambda: net(image[pair], text.index_select(pair))) / 2e9
    ci = net.interaction
    rows = [
        ("U-Net encoder", _millions(net.encoder), None),
        ("U-Net decoder with PLAM skips", _millions(net.decoder), None),
        ("CI text-to-vision half (kept at inference)", _millions(ci.text_to_vision), None),
        ("CI vision-to-text half + W_poi/W_woi heads (training only)",
         _millions(ci.vision_to_text) + _millions(ci.poi_head) + _millions(ci.woi_head), None),
        ("Conditioned vision reconstructor, 3 layers (training only)", _millions(net.vision_reconstructor), None),
        ("Conditioned language reconstructor, 3 layers (training only)", _millions(net.text_reconstructor), None),
    ]
    totals = {"inf_params": inf_params, "inf_flops": inf_macs, "train_params": _millions(net),
              "train_flops": train_macs, "text_encoder_params": count_parameters(model.text_encoder, exclude=()) / 1e6,
              "text_tokens": float(text.tokens.shape[1]), "text_dim": float(model.text_dim)}
    return rows, totals


def latency_ms(size: int = 224, repeats: int = 10) -> tuple[float, float]:
    """Median and min milliseconds per image of the inference graph (``model.net`` in eval mode), batch 1, CPU."""
    model = RecLMIS(in_channels=3, widths=(64, 128, 256, 512, 512), num_heads=8)
    text = model.encode_text([NOTE])
    net = model.net.eval()
    image = torch.randn(1, 3, size, size)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            net(image, text)
            if i >= 2:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def synthetic(max_epochs: int, num_train: int) -> dict[str, float]:
    """Train the quick-config RecLMIS (``reclmis_small`` = configs/reclmis.yaml: widths 16..128, 4 heads, AdamW 1e-3,
    no schedule, no augmentation) with MiniLM on the synthetic data, then test."""
    torch.manual_seed(0)
    model = langseg.create_model("reclmis_small", recon_depth=3, text_encoder="minilm")
    return fit_and_test(model, max_epochs=max_epochs, num_train=num_train, num_val=128, num_test=256,
                        image_size=64, batch_size=32, num_workers=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on 128 images, 3 timing repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads; 1 avoids oversubscription when other jobs share the 2 cores")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs, num_train, repeats = (1, 128, 3) if args.quick else (6, 1024, 10)

    rows, tot = complexity()
    median, best = latency_ms(repeats=repeats)
    fit = synthetic(epochs, num_train)

    def delta(ours: float, key: str) -> str:
        return f"{100 * (ours / PAPER[key] - 1):+.1f}%"

    cmd = "PYTHONPATH=. python benchmarks/reclmis_figures.py" + (" --quick" if args.quick else "")
    cmd += f" --threads {args.threads}" if args.threads != 1 else ""
    lines = [
        "# RecLMIS figures",
        "",
        f"Produced by `{cmd}` on {machine()}.",
        "No GPU is available in this session: latency is CPU only and is not comparable with the paper's RTX 3090 figure.",
        "",
        "## Parameters and FLOPs at 224x224 (paper widths 64/128/256/512/512, 3-channel input)",
        "",
        "FLOPs: one multiply-add = one FLOP (`langseg.profiling.count_macs`). The text encoder is excluded "
        f"(MiniLM, {tot['text_encoder_params']:.1f} M, here; the paper's 12-layer text transformer). "
        f"The note has {int(tot['text_tokens'])} tokens of width {int(tot['text_dim'])}.",
        "",
        "| graph | params (M), ours | params (M), paper | FLOPs (G), ours | FLOPs (G), paper |",
        "|---|---|---|---|---|",
        f"| inference (`net.eval()`, `net.inference_parameters()`) "
        f"| {tot['inf_params']:.2f} ({delta(tot['inf_params'], 'inf_params')}) "
        f"| {PAPER['inf_params']} | {tot['inf_flops']:.2f} ({delta(tot['inf_flops'], 'inf_flops')}) | {PAPER['inf_flops']} |",
        f"| training (all heads, per image) | {tot['train_params']:.2f} ({delta(tot['train_params'], 'train_params')}) "
        f"| {PAPER['train_params']} | {tot['train_flops']:.2f} ({delta(tot['train_flops'], 'train_flops')}) "
        f"| {PAPER['train_flops']} |",
        "",
        "| part | params (M) |",
        "|---|---|",
        *[f"| {name} | {params:.2f} |" for name, params, _ in rows],
        "",
        "## Inference latency, one 224x224 image, batch 1",
        "",
        "| device | median ms/img | best ms/img | paper (RTX 3090) |",
        "|---|---|---|---|",
        f"| {machine()} | {median:.1f} | {best:.1f} | {PAPER['latency_ms']} |",
        "",
        f"({repeats} timed runs after 2 warm-ups, inference graph (`net.eval()`), text features precomputed, "
        f"{torch.get_num_threads()} intra-op thread(s); other jobs may have shared the 2 cores.)",
        "",
        "## Synthetic referring-lesion data: text vs swapped text",
        "",
        f"Quick-config model (widths 16/32/64/128/128, 4 heads, 3 reconstructor layers, MiniLM), "
        f"{num_train} training images of 64x64, {epochs} epochs, batch 32, AdamW lr 1e-3, test on 256 images; "
        f"fit took {fit['fit_seconds']:.0f} s. Swapped text: each test image is segmented with another image's text.",
        "",
        "| test Dice (text) | test mIoU (text) | test Dice (swapped text) |",
        "|---|---|---|",
        f"| {fit['test/dice']:.3f} | {fit['test/miou']:.3f} | {fit['test/dice_swapped_text']:.3f} |",
        "",
    ]
    text = "\n".join(lines)
    sys.stdout.write(text)
    if not args.quick:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
