"""Training throughput of every paper-size method at its paper input size, fp32 vs bf16-mixed, and what the fused
AdamW step and channels-last change.

    PYTHONPATH=. python benchmarks/training.py            # full run, writes its section of docs/benchmarks.md
    PYTHONPATH=. python benchmarks/training.py --quick    # 64x64, batch 2, one repeat, prints only

A step is what ``training_step`` does without logging: text encoding (frozen, cache warm), the method's
augmentation, forward, loss, backward and the optimiser ``configure_optimizers`` builds (fused AdamW/Adam by
default). Each method runs in its own subprocess; fp32 and bf16-mixed steps alternate in it (one warm-up step
each, then ``--repeats`` timed steps each); images/s is the batch over the median step. On a CPU the batch is the
paper's capped at ``--max_batch`` (a step of RecLMIS at batch 32 takes minutes here); on a GPU it is the paper's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TEXTS = ["One infected area in the upper left lung.", "Unilateral infection, two infected areas, right lung.",
         "The smallest lesion, in the lower right lung.", "All lesions: bilateral pulmonary infection, three infected areas."]
# (image size, batch, channels) of each method's paper config (configs/*_paper.yaml; qata.yaml where they use it)
PAPER = {"early_fusion": (224, 16, 1), "guidedecoder": (224, 32, 3), "himix": (224, 32, 3), "lsms": (480, 16, 3),
         "lvit": (224, 2, 3), "mmi_unet": (224, 32, 3), "reclmis": (224, 32, 3), "unet": (224, 16, 1)}


def _batch(size: int, n: int, channels: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, channels, size, size, generator=g).to(device),
            "mask": (torch.rand(n, 1, size, size, generator=g) > 0.8).float().to(device),
            "text": [TEXTS[i % len(TEXTS)] for i in range(n)]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_fn(model, optimizer, batch: dict, device: torch.device, precision: str, channels_last: bool = False):
    """One training step of ``model`` on ``batch`` (returns nothing: no host sync inside)."""
    image = batch["image"].contiguous(memory_format=torch.channels_last) if channels_last else batch["image"]

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            text = model.encode_text(batch["text"])
            data = model.transform_train_batch({**batch, "image": image}, text)
            outputs = model(data["image"], text, **{key: data[key] for key in model.net_inputs})
            loss = model.compute_loss(outputs, data["mask"], text)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def alternate(steps: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each of ``steps``, run in turn (one untimed warm-up each first)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for k in range(repeats + 1):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if k:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_method(name: str, quick: bool, max_batch: int, repeats: int) -> dict:
    import langseg

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, paper_batch, channels = PAPER[name]
    size, batch_size = (64, 2) if quick else (size, paper_batch if device.type == "cuda" else min(paper_batch, max_batch))
    torch.manual_seed(0)
    model = langseg.create_model(name, in_channels=channels).to(device).train()
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    batch = _batch(size, batch_size, channels, device)
    seconds = alternate({p: step_fn(model, optimizer, batch, device, p) for p in ("32", "bf16-mixed")}, repeats, device)
    return {"model": name, "size": size, "batch": batch_size, "paper_batch": paper_batch,
            "fused": bool(optimizer.param_groups[0].get("fused")),
            "fp32": batch_size / seconds["32"], "bf16": batch_size / seconds["bf16-mixed"]}


def measure_options(name: str, quick: bool, max_batch: int, repeats: int) -> dict:
    """fp32 step of ``name``: fused vs per-parameter AdamW/Adam, and channels-last vs contiguous."""
    import langseg
    from langseg.models.base import use_fused_step

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, paper_batch, channels = PAPER[name]
    size, batch_size = (64, 2) if quick else (size, min(paper_batch, max_batch))
    batch = _batch(size, batch_size, channels, device)
    torch.manual_seed(0)
    model = langseg.create_model(name, in_channels=channels).to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    plain = model.optimizer(trainable)
    fused = model.optimizer(trainable)
    use_fused_step(fused)
    step_fn(model, plain, batch, device, "32")()  # gradients for the optimiser steps below
    step_seconds = alternate({"plain": plain.step, "fused": fused.step}, repeats * 3, device)
    layouts = {}
    for layout in ("contiguous", "channels_last"):
        torch.manual_seed(0)
        m = langseg.create_model(name, in_channels=channels).to(device).train()
        if layout == "channels_last":
            m = m.to(memory_format=torch.channels_last)
        opt = m.configure_optimizers()
        opt = opt["optimizer"] if isinstance(opt, dict) else opt
        layouts[layout] = step_fn(m, opt, batch, device, "32", channels_last=layout == "channels_last")
    layout_seconds = alternate(layouts, repeats, device)
    return {"model": name, "size": size, "batch": batch_size, "params_m": sum(p.numel() for p in trainable) / 1e6,
            "optimizer": type(plain).__name__, "opt_plain_ms": 1000 * step_seconds["plain"],
            "opt_fused_ms": 1000 * step_seconds["fused"], "step_contiguous_ms": 1000 * layout_seconds["contiguous"],
            "step_channels_last_ms": 1000 * layout_seconds["channels_last"]}


def _child(kind: str, name: str, opts: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--arg", name, "--max_batch", str(opts.max_batch),
           "--repeats", str(opts.repeats)] + (["--quick"] if opts.quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode:
        raise RuntimeError(f"{kind} {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(rows: list[dict], options: list[dict], command: str, machine: str, load: str, opts) -> str:
    lines = [
        "## Training throughput per method\n",
        f"Command: `{command}` ({machine}; {load} at the end of the run). Paper input size; batch: the paper's, "
        f"capped at {opts.max_batch} on a CPU; fp32 and bf16-mixed steps alternate in one process, "
        f"{opts.repeats} timed steps each after a warm-up, median. A step: cached text features, the method's "
        f"augmentation, forward, loss, backward, the optimiser of `configure_optimizers` (fused: see below).\n",
        "| method | size | batch (paper) | train img/s fp32 | train img/s bf16-mixed | bf16 / fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']}² | {r['batch']} ({r['paper_batch']}) | {r['fp32']:.2f} | "
                     f"{r['bf16']:.2f} | {r['bf16'] / r['fp32']:.2f}x |")
    lines += ["", "**Step options** (fp32, same batches, alternated): the optimiser step alone with torch's default "
              "(a per-parameter loop on CPU, `foreach` on CUDA) vs the fused kernel langseg now selects "
              "(`fused_optimizer=True`), and the whole step with the model and images in channels-last memory "
              "format vs contiguous (`langseg.callbacks.PerformanceOptions(channels_last=True)`, off by default).\n",
              "| method | trainable params | optimiser step default | fused | whole step contiguous | channels-last |",
              "|---|---|---|---|---|---|"]
    for o in options:
        lines.append(f"| {o['model']} ({o['size']}², batch {o['batch']}) | {o['params_m']:.1f} M | "
                     f"{o['optimizer']} {o['opt_plain_ms']:.1f} ms | {o['opt_fused_ms']:.1f} ms "
                     f"({o['opt_plain_ms'] / o['opt_fused_ms']:.2f}x) | {o['step_contiguous_ms']:.0f} ms | "
                     f"{o['step_channels_last_ms']:.0f} ms ({o['step_contiguous_ms'] / o['step_channels_last_ms']:.2f}x) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64x64, batch 2; prints instead of writing docs")
    parser.add_argument("--models", nargs="*", help="methods (default: every paper-size method)")
    parser.add_argument("--max_batch", type=int, default=4, help="batch cap on a CPU")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--arg", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        measure = {"method": measure_method, "options": measure_options}[opts.child]
        sys.stdout.write(json.dumps(measure(opts.arg, opts.quick, opts.max_batch, opts.repeats)) + "\n")
        return
    from benchmarks.common import load_average, machine, write_section

    names = opts.models or list(PAPER)
    rows, options = [], []
    for kind, todo, done in (("method", names, rows), ("options", [n for n in ("unet", "himix") if n in names], options)):
        for name in todo:
            done.append(_child(kind, name, opts))
            sys.stderr.write(json.dumps(done[-1]) + "\n")  # progress: each row as it is measured
    command = "PYTHONPATH=. python benchmarks/training.py" + (" --quick" if opts.quick else "") + (
        f" --models {' '.join(opts.models)}" if opts.models else "") + (
        f" --max_batch {opts.max_batch}" if opts.max_batch != 4 else "") + (
        f" --repeats {opts.repeats}" if opts.repeats != 2 else "")
    text = render(rows, options, command, machine(), load_average(), opts)
    sys.stdout.write(text)
    if not opts.quick:
        write_section(Path(opts.output), "training", text)


if __name__ == "__main__":
    main()
