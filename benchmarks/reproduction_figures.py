"""Parameters and FLOPs of the paper presets at each paper's input size, beside the papers' and the official code's.

    PYTHONPATH=. python benchmarks/reproduction_figures.py    # writes docs/benchmarks/reproduction.md

FLOPs: one multiply-add = one FLOP (``langseg.profiling.count_macs``); text encoders excluded. The official-code
figures are those of an independent run of the official code with random weights (``shared/methods``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.common import machine
from benchmarks.himix_figures import bert_base_like_folder, cost_row
from benchmarks.reclmis_figures import complexity
from langseg.models import GuideDecoder, HiMix
from langseg.blocks.text_encoder import TextFeatures
from langseg.models.lsms import LSMSNet
from langseg.models.reclmis import RecLMISNet
from langseg.files import atomic_write_text
from langseg.profiling import count_macs, count_parameters

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "reproduction.md"


def lsms_row(label: str, size: int = 480, **kwargs) -> str:
    """Image-only LSMS (Table II's row without the language branch) at ``size``."""
    net = LSMSNet(3, 0, **kwargs).eval()
    macs = count_macs(lambda: net(torch.zeros(1, 3, size, size), None)) / 1e9
    params = count_parameters(net) / 1e6
    return (f"| {label} | {size}² | 8.78 M / 8.91 G | none released | {params:.2f} M ({params / 8.78 - 1:+.1%}) / "
            f"{macs:.2f} G ({macs / 8.91 - 1:+.1%}) |")


def reclmis_official_costs(size: int = 224) -> dict[str, float]:
    """Inference and training-mode parameters (M) and FLOPs (G, per image) of ``configs/reclmis_official.yaml``'s
    network with the official text encoder's shape (CLIP ViT-B/32 text tower: 18 tokens of 512-d), on ``size`` x
    ``size`` RGB images; training FLOPs from a batch of two (the contrastive loss needs a batch)."""
    net = RecLMISNet(3, 512, widths=(64, 128, 256, 512, 512), num_heads=4, mlp_ratio=2.0, recon_depth=4,
                     interaction="official", text_target_dim=512, reconstructor="official").eval()
    tokens = torch.randn(2, 18, 512)
    text = TextFeatures(tokens=tokens, mask=torch.ones(2, 18, dtype=torch.bool), sentence=tokens[:, 0])
    image = torch.randn(2, 3, size, size)
    one = TextFeatures(tokens=tokens[:1], mask=text.mask[:1], sentence=text.sentence[:1])
    inf_flops = count_macs(lambda: net(image[:1], one)) / 1e9
    train_flops = count_macs(lambda: net.train()(image, text)) / 2e9
    c, depth = 512, 4
    return {"inf_params": sum(p.numel() for p in net.inference_parameters()) / 1e6, "inf_flops": inf_flops,
            "train_params": count_parameters(net) / 1e6, "train_flops": train_flops,
            # official tensors langseg does not build: PLAM's conv_sig (1x1 conv on each skip) and, per reconstructor
            # and layer, decoder1's cross-attention (in/out projections) and its LayerNorm
            "conv_sig": sum(w * w + w for w in (64, 128, 256, 512)) / 1e6,
            "context_cross_attention": 2 * depth * (4 * c * c + 4 * c + 2 * c) / 1e6}


def main() -> None:
    torch.set_num_threads(2)
    lines = ["# Paper presets: parameters and FLOPs", "", f"Machine: {machine()}", "",
             "Command: `PYTHONPATH=. python benchmarks/reproduction_figures.py`", "",
             "## GuideDecoder and HiMix (224², ConvNeXt-T, a random 768-d 12-layer BERT as CXR-BERT's shape)", "",
             "Official code (random weights): ConvNeXt-T 27.82 M; decoder 14.03 M (GuideDecoder), 14.80 M (HiMix); "
             "head 0.33 M. The papers report no counts.", "",
             "| model (image encoder, text encoder) | input | trainable M | decoder+head M | frozen text M | GFLOPs |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        bert = str(bert_base_like_folder(Path(tmp)))
        lines.append(cost_row("GuideDecoder, guidedecoder_paper", GuideDecoder(text_encoder=bert), 224))
        lines.append(cost_row("HiMix, langseg default (ffn prenorm)", HiMix(text_encoder=bert), 224))
        lines.append(cost_row("HiMix, himix_paper (ffn official, unshifted FFT)",
                              HiMix(text_encoder=bert, ffn="official", centred_fft=False), 224))
    _, reclmis = complexity(224)
    official = reclmis_official_costs(224)
    lines += ["", "## RecLMIS (224², text encoder excluded)", "",
              "| graph | paper | official code | langseg (reclmis_paper) |", "|---|---|---|---|",
              f"| inference | 23.7 M / 24.1 G | 17.66 M / 23.78 G | {reclmis['inf_params']:.2f} M / "
              f"{reclmis['inf_flops']:.2f} G |",
              f"| training | 74.2 M / 36.62 G | 69.44 M / 28.7 G | {reclmis['train_params']:.2f} M / "
              f"{reclmis['train_flops']:.2f} G |",
              f"| inference, `interaction: official` (configs/reclmis_official.yaml, 512-d CLIP text) | 23.7 M / "
              f"24.1 G | 17.66 M / 23.78 G | {official['inf_params']:.2f} M / {official['inf_flops']:.2f} G |",
              f"| training, configs/reclmis_official.yaml (`reconstructor: official`, depth 4) | 74.2 M / 36.62 G | "
              f"69.44 M / 28.7 G | {official['train_params']:.2f} M / {official['train_flops']:.2f} G |",
              "", "The official inference count includes the PLAM `conv_sig` layers (0.35 M) that its forward pass never "
              "calls and langseg does not build (`langseg convert --from reclmis` drops them). Its training count also "
              "includes each reconstructor's cross-attention in its context stack (`decoder1`, which `decoding=2` "
              f"runs without a context), {official['context_cross_attention']:.2f} M, which langseg does not build "
              f"either: {official['train_params']:.2f} + {official['conv_sig']:.2f} + "
              f"{official['context_cross_attention']:.2f} = "
              f"{official['train_params'] + official['conv_sig'] + official['context_cross_attention']:.2f} M.",
              "", "## LSMS image-only (480², Table II)", "",
              "| model | input | paper | official code | langseg |", "|---|---|---|---|---|",
              lsms_row("decoder at H/4 (Eq. 11), FFN ratio 2 (the model's default)"),
              lsms_row("lsms_paper: decoder at H/8, FFN ratios 2/4/2/2", align_stage=1, mlp_ratios=(2, 4, 2, 2))]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
