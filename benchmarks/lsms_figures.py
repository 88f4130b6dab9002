"""LSMS figures: parameters and FLOPs against Table II (8.78 M, 8.91 G), and text vs image-only on synthetic data.

    PYTHONPATH=. python benchmarks/lsms_figures.py            # writes docs/benchmarks/lsms.md
    PYTHONPATH=. python benchmarks/lsms_figures.py --quick    # short training, for a smoke check; writes to the
                                                              # temp folder unless --out is given

FLOPs are multiply-adds (one multiply-add = one FLOP) counted by ``langseg.profiling.count_macs``
(torch's FlopCounterMode: convolutions, matmuls, NMF and attention products; not element-wise ops).
The text encoder is excluded; the text projections w_l1/w_l2 are built with C_l = 768 (BERT-base).
"""
from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import langseg
from benchmarks.common import fit_and_test, machine
from langseg.blocks.full_scale_decoder import FullScaleDecoder
from langseg.blocks.svla import LanguageGuidedVisionEncoder
from langseg.profiling import count_macs, count_parameters

PAPER_PARAMS_M, PAPER_FLOPS_G = 8.78, 8.91
BERT_DIM, WORDS = 768, 20
SIZES = (224, 256, 352, 384, 480)
# (label, regex on parameter / module names); the first match wins.
GROUPS = (
    ("image stem (to H/4)", r"encoder\.stem"),
    ("down-sampling 3x3 s2 conv + BN", r"encoder\.downs"),
    ("SVLA visual: DW 5x5, strip ConvUnits, 1x1 mix", r"attn\.(pre|units|mix)"),
    ("SVLA language: w_l1, w_l2 (768 -> C_v)", r"attn\.w_l[12]"),
    ("SVLA language: w_v1, w_v2, w_f (+ attention products)", r"attn\.w_|attn$"),
    ("block norms (BN)", r"\.norm[12]"),
    ("FFN (1x1, DW 3x3, 1x1; ratio 2)", r"\.ffn"),
    ("decoder: Hamburger head (squeeze, NMF, align)", r"decoder\.head"),
    ("decoder: Seg 1x1 conv", r"decoder\.seg"),
)


class CountedLSMS(nn.Module):
    """Encoder + decoder of LSMS built standalone (no text encoder), as in Table II."""

    def __init__(self, text_dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.encoder = LanguageGuidedVisionEncoder(in_channels, text_dim)
        self.decoder = FullScaleDecoder()

    def forward(self, image: Tensor) -> Tensor:
        words = mask = None
        if self.text_dim:
            words = torch.zeros(image.shape[0], WORDS, self.text_dim)
            mask = torch.ones(image.shape[0], WORDS, dtype=torch.bool)
        return self.decoder(self.encoder(image, words, mask), image.shape[-2:])[1]


def _group(name: str) -> str:
    return next((label for label, pattern in GROUPS if re.search(pattern, name)), "other")


def parameter_groups(net: nn.Module) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, p in net.named_parameters():
        out[_group(name)] = out.get(_group(name), 0) + p.numel()
    return out


@torch.no_grad()
def flop_groups(net: nn.Module, size: int) -> dict[str, int]:
    """MACs per group: each module's own ops (its total minus its children's totals)."""
    counter = FlopCounterMode(display=False)
    with counter:
        net(torch.zeros(1, 3, size, size))
    totals = {k.removeprefix("CountedLSMS").lstrip("."): sum(v.values()) // 2 for k, v in counter.get_flop_counts().items()
              if k != "Global"}
    own = dict(totals)
    for name, value in totals.items():
        parent = name
        while parent:  # nearest called ancestor (ModuleLists are never called)
            parent = parent.rsplit(".", 1)[0] if "." in parent else ""
            if parent in totals:
                own[parent] -= value
                break
    out: dict[str, int] = {}
    for name, value in own.items():
        if value:
            out[_group(name)] = out.get(_group(name), 0) + value
    return out


def complexity_section() -> list[str]:
    nets = {"LSMS (text, C_l = 768)": CountedLSMS(BERT_DIM).eval(), "LSMS image-only": CountedLSMS(0).eval()}
    lines = ["## Parameters and FLOPs (text encoder excluded)", "",
             "Paper (Table II): 8.78 M parameters, 8.91 G FLOPs, the same for the text and the image-only rows.", "",
             "| model | params (M) | vs 8.78 M | " + " | ".join(f"G @{s}" for s in SIZES) + " | size where FLOPs = 8.91 G |",
             "|---|---|---|" + "---|" * len(SIZES) + "---|"]
    for label, net in nets.items():
        params = count_parameters(net) / 1e6
        flops = {s: count_macs(lambda s=s: net(torch.zeros(1, 3, s, s))) / 1e9 for s in SIZES}
        best = min(SIZES, key=lambda s: abs(flops[s] - PAPER_FLOPS_G))
        lines.append(f"| {label} | {params:.2f} | {100 * (params / PAPER_PARAMS_M - 1):+.1f}% | "
                     + " | ".join(f"{flops[s]:.2f}" for s in SIZES)
                     + f" | {best} ({100 * (flops[best] / PAPER_FLOPS_G - 1):+.1f}%) |")
    text_proj = BERT_DIM * 256 + 256
    lines += ["", f"Not counted: the training-only projection of L_avg for L_con ({text_proj / 1e6:.2f} M) "
              "and the text encoder. Input 3 channels; batch 1.", "",
              "### Block by block (parameters; FLOPs at 384 x 384)", "",
              "| block | params text (M) | params image-only (M) | G text @384 | G image-only @384 |", "|---|---|---|---|---|"]
    p = {k: parameter_groups(n) for k, n in nets.items()}
    f384 = {k: flop_groups(n, 384) for k, n in nets.items()}
    keys = list(nets)
    for label, _ in (*GROUPS, ("other", "")):
        cells = [p[keys[0]].get(label, 0) / 1e6, p[keys[1]].get(label, 0) / 1e6, f384[keys[0]].get(label, 0) / 1e9,
                 f384[keys[1]].get(label, 0) / 1e9]
        if any(cells):
            lines.append(f"| {label} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return lines


def training_section(quick: bool, out: Path, head: list[str]) -> list[str]:
    epochs, num_train = (1, 128) if quick else (6, 1024)
    data = dict(num_train=num_train, num_val=128, num_test=256, image_size=64, batch_size=32, num_workers=0)
    lines = ["## Synthetic referring-lesion data: text vs image-only", "",
             f"`benchmarks.common.fit_and_test`, {epochs} epochs, {num_train} train / 128 val / 256 test images of "
             "64 x 64, batch 32, AdamW lr 2e-3, seed 0. The scaled-down model of `configs/lsms.yaml` "
             "(widths 16/32/64/96, blocks 1/1/2/1, FFN ratio 2, Hamburger 64 channels, NMF rank 8); text encoder "
             "minilm (frozen).", "",
             "Fit times are wall-clock on 2 CPU cores shared with other jobs, so they are not a speed comparison.", "",
             "| variant | test Dice | test mIoU | test Dice, swapped text | fit time (s) |", "|---|---|---|---|---|"]
    for label, use_text in (("LSMS (text, L_con)", True), ("LSMS image-only", False)):
        torch.manual_seed(0)
        model = langseg.create_model("lsms_small", use_text=use_text, text_encoder="minilm")  # AdamW 2e-3, no schedule
        result = fit_and_test(model, max_epochs=epochs, **data)
        swapped = f"{result['test/dice_swapped_text']:.3f}" if use_text else "n/a"
        lines.append(f"| {label} | {result['test/dice']:.3f} | {result['test/miou']:.3f} | {swapped} | "
                     f"{result['fit_seconds']:.0f} |")
        print(lines[-1], flush=True)
        _write(out, head + lines)  # keep what is measured so far
    return lines


def _write(out: Path, lines: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on 128 images")
    parser.add_argument("--out", help="default: docs/benchmarks/lsms.md; with --quick, lsms.md in the temp folder")
    args = parser.parse_args()
    if args.out is None:
        args.out = str(Path(tempfile.gettempdir()) / "lsms.md") if args.quick else "docs/benchmarks/lsms.md"
    command = "PYTHONPATH=. python benchmarks/lsms_figures.py" + (" --quick" if args.quick else "")
    lines = ["# LSMS figures", "", f"Machine: {machine()}", "", f"Command: `{command}`", ""]
    lines += complexity_section() + [""]
    print("\n".join(lines), flush=True)
    _write(Path(args.out), lines)
    lines += training_section(args.quick, Path(args.out), lines)
    _write(Path(args.out), lines)


if __name__ == "__main__":
    main()
