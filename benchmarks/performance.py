"""Performance of every registered paper-size model, the frozen-text cache and the training-loop overhead.

    PYTHONPATH=. python benchmarks/performance.py            # full run, writes its section of docs/benchmarks.md
    PYTHONPATH=. python benchmarks/performance.py --quick    # CI-sized (64x64, few steps), prints only

Each model is measured in its own subprocess so that its peak memory (CPU: max resident set size;
GPU: torch.cuda.max_memory_allocated) is its own. FLOPs: multiply-adds of one forward pass at the
paper's input size, text encoder excluded (one multiply-add = one FLOP, as the papers count), in eval mode:
the inference graph (for RecLMIS, ``RecLMISNet.inference_modules`` only). ``--models unet_small ...``
measures the ``*_small`` variants of the quick configs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TEXTS = ["One infected area in the upper left lung.", "Unilateral infection, two infected areas, right lung.",
         "The smallest lesion, in the lower right lung.", "All lesions: bilateral pulmonary infection, three infected areas."]
PAPER_SIZE = {"lsms": 480}  # FLOPs at the paper's input size; 224 for the others


def _batch(size: int, n: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(n, 1, size, size, generator=g) > 0.8).float()
    return {"image": torch.randn(n, 1, size, size, generator=g).to(device), "mask": mask.to(device),
            "text": [TEXTS[i % len(TEXTS)] for i in range(n)]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _train_steps(model, batch: dict, steps: int, device: torch.device, precision: str = "32") -> float:
    """Seconds per training step (forward, loss, backward, optimiser), after one warm-up step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for k in range(steps + 1):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            text = model.encode_text(batch["text"])
            loss = model.compute_loss(model(batch["image"], text), batch["mask"], text)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def _latency(model, size: int, n: int, reps: int, device: torch.device, precision: str = "32") -> float:
    """Milliseconds per image of inference at batch ``n`` (text encoding included, cache warm)."""
    model.eval()
    batch = _batch(size, n, device)
    times = []
    for k in range(reps + 1):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            model.segment(batch["image"], batch["text"])
        _sync(device)
        if k:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / n


def measure_model(name: str, quick: bool, precision: str) -> dict:
    import langseg
    from langseg.profiling import count_macs, count_parameters

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = langseg.create_model(name).to(device)
    size = 64 if quick else 224
    flop_size = 64 if quick else PAPER_SIZE.get(name, 224)
    text_params = count_parameters(model.text_encoder, exclude=()) if model.text_encoder is not None else 0
    probe = _batch(flop_size, 1, device)
    model.eval()
    with torch.no_grad():
        text = model.encode_text(probe["text"])
        macs = count_macs(lambda: model(probe["image"], text))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batch_size = 4 if quick else 8
    step = _train_steps(model, _batch(size, batch_size, device), 2 if quick else 3, device, precision)
    lat1 = _latency(model, size, 1, 3 if quick else 5, device, precision)
    lat16 = _latency(model, size, 16, 1 if quick else 2, device, precision)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"model": name, "params_total_m": count_parameters(model, exclude=()) / 1e6,
            "params_trainable_m": count_parameters(model, exclude=(), trainable_only=True) / 1e6,
            "params_text_m": text_params / 1e6, "gflops": macs / 1e9, "flop_size": flop_size, "size": size,
            "train_images_per_s": batch_size / step, "latency_ms_b1": lat1, "latency_ms_b16": lat16,
            "peak_memory_mb": peak, "precision": precision}


def measure_cache(quick: bool) -> dict:
    """Training step time with a frozen BERT-base-size encoder: features cached vs encoded every step."""
    import shutil

    from transformers import BertConfig, BertModel

    import langseg
    from langseg.blocks.text_encoder import TINY_BERT_DIR

    folder = Path(tempfile.mkdtemp(prefix="bertbase_"))
    vocab = (TINY_BERT_DIR / "vocab.txt").read_text().splitlines()
    config = BertConfig(vocab_size=len(vocab))  # BERT-base: 12 layers, 768-d, 12 heads; small vocabulary
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TINY_BERT_DIR / name, folder / name)
    device = torch.device("cpu")
    size, batch_size, steps = (64, 8, 3) if quick else (224, 8, 5)
    model = langseg.create_model("early_fusion", text_encoder=str(folder), max_text_length=32)
    batch = _batch(size, batch_size, device)
    cached = _train_steps(model, batch, steps, device)
    model.text_encoder.use_cache = False
    uncached = _train_steps(model, batch, steps, device)
    shutil.rmtree(folder)
    return {"size": size, "batch": batch_size, "cached_s": cached, "uncached_s": uncached,
            "speedup": uncached / cached, "encoder_params_m": sum(p.numel() for p in model.text_encoder.parameters()) / 1e6}


def measure_overhead(quick: bool) -> dict:
    """Step time of ``Trainer.fit`` vs a bare loop over the same batches, same model (U-Net, resnet18)."""
    import lightning as L

    from benchmarks.common import SecondEpochTimer
    from langseg.data import SyntheticReferringDataModule
    from langseg.models import UNetBaseline

    size, batch_size, steps = (64, 16, 10) if quick else (128, 16, 16)
    dm = SyntheticReferringDataModule(num_train=batch_size * steps, num_val=batch_size, image_size=size,
                                      batch_size=batch_size, num_workers=int(os.environ.get("BENCH_WORKERS", 2)))

    fit_steps, bare_steps = [], []
    for _ in range(3):  # alternate the two loops: this machine's speed drifts between runs by more than 10%
        timer = SecondEpochTimer()
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, callbacks=[timer])
        trainer.fit(UNetBaseline(), dm)
        fit_steps.append(timer.median_step())
        batches = list(dm.train_dataloader())
        L.seed_everything(0, verbose=False)
        model = UNetBaseline()
        opt = model.configure_optimizers()
        times = []
        for epoch in range(2):
            for batch in batches:
                start = time.perf_counter()
                loss = model.compute_loss(model(batch["image"], None), batch["mask"], None)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if epoch == 1:
                    times.append(time.perf_counter() - start)
        bare_steps.append(statistics.median(times))
    ratios = [f / b - 1 for f, b in zip(fit_steps, bare_steps)]
    return {"size": size, "batch": batch_size, "workers": dm.num_workers, "fit_step_s": statistics.median(fit_steps),
            "bare_step_s": statistics.median(bare_steps), "overhead": statistics.median(ratios), "overheads": ratios}


def _child(kind: str, arg: str, quick: bool, precision: str = "32") -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--arg", arg, "--precision", precision] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode:
        raise RuntimeError(f"{kind} {arg} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(rows: list[dict], cache: dict, overhead: dict, machine: str, command: str) -> str:
    lines = [f"Machine: {machine}. Command: `{command}`. Every number below comes from that run.\n",
             "## Models\n",
             "Params in millions (total / trainable / text encoder). GFLOPs: multiply-adds of one forward pass "
             "at the size given, text encoder excluded. Training throughput and latency at "
             f"{rows[0]['size']}x{rows[0]['size']}, text encoding included (frozen, cache warm); latency is per image. "
             "Peak memory: the process's maximum resident set size on CPU, `max_memory_allocated` on GPU.\n",
             "| model | params total | trainable | text enc. | GFLOPs (size) | train img/s | ms/img b1 | ms/img b16 | peak MB | precision |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params_total_m']:.2f} | {r['params_trainable_m']:.2f} | {r['params_text_m']:.2f} | "
                     f"{r['gflops']:.2f} ({r['flop_size']}²) | {r['train_images_per_s']:.1f} | {r['latency_ms_b1']:.1f} | "
                     f"{r['latency_ms_b16']:.1f} | {r['peak_memory_mb']:.0f} | {r['precision']} |")
    lines += ["\n## Frozen-text cache\n",
              f"`early_fusion` (U-Net resnet18) with a frozen random-initialised BERT-base-size encoder "
              f"(12 layers, 768-d, {cache['encoder_params_m']:.1f} M parameters with a small vocabulary), "
              f"{cache['size']}x{cache['size']}, batch {cache['batch']}, median training step: "
              f"**{cache['uncached_s']*1000:.0f} ms** encoding every step vs **{cache['cached_s']*1000:.0f} ms** "
              f"cached, a **{cache['speedup']:.2f}x** speed-up (target >= 1.5x).\n",
              "## Training-loop overhead\n",
              f"U-Net (resnet18), {overhead['size']}x{overhead['size']}, batch {overhead['batch']}, synthetic data "
              f"loaded by {overhead['workers']} workers: median over 3 alternated runs of the median `Trainer.fit` step of the second epoch (batch start to batch start, data wait, logging and hooks included) "
              f"**{overhead['fit_step_s']*1000:.0f} ms** vs the bare forward+loss+backward+AdamW step of the same model on the same batches pre-loaded in memory (second pass) "
              f"**{overhead['bare_step_s']*1000:.0f} ms**: overhead **{overhead['overhead']*100:+.1f}%** (median; the three runs: {', '.join(f'{r*100:+.1f}%' for r in overhead['overheads'])}; target <= 10%).\n"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64x64, few steps; prints instead of writing docs")
    parser.add_argument("--models", nargs="*",
                        help="registered names (default: every paper-size model, i.e. all but the *_small variants)")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--arg", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        result = {"model": lambda: measure_model(opts.arg, opts.quick, opts.precision),
                  "cache": lambda: measure_cache(opts.quick), "overhead": lambda: measure_overhead(opts.quick)}[opts.child]()
        sys.stdout.write(json.dumps(result) + "\n")
        return
    import langseg
    from benchmarks.common import machine, write_section

    names = opts.models or [name for name in langseg.list_models() if not name.endswith("_small")]
    rows = [_child("model", name, opts.quick, opts.precision) for name in names]
    cache = _child("cache", "", opts.quick)
    overhead = _child("overhead", "", opts.quick)
    command = "PYTHONPATH=. python benchmarks/performance.py" + (" --quick" if opts.quick else "") + (
        f" --precision {opts.precision}" if opts.precision != "32" else "")
    text = render(rows, cache, overhead, machine(), command)
    sys.stdout.write(text)
    if not opts.quick:
        write_section(Path(opts.output), "performance", text)


if __name__ == "__main__":
    main()
