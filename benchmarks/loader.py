"""Training-loader throughput of ``ImageTextMaskDataModule`` with and without the loader cache, against what the
fastest and slowest methods consume per second on one modern GPU (estimated from their measured FLOPs).

    PYTHONPATH=. python benchmarks/loader.py            # full run, writes its section of docs/benchmarks.md
    PYTHONPATH=. python benchmarks/loader.py --quick    # 128 images, prints only

Two generic-format folders are generated in a temporary folder: 512x512 8-bit PNGs (like MosMedData+) and 224x224
(like QaTa-COV19). The training loader (224x224, batch 16, 2 workers, shuffled) runs 2 epochs; images/s is that of
the second (workers started, page cache warm). Before: ``cache=False`` (decode and resize every epoch); after:
``cache=True`` (the cache built beforehand; its one-off build time is reported). The variants alternate,
``--repeats`` times; medians.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time

import numpy as np
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GPU_NAME, GPU_BF16_TFLOPS, GPU_UTILISATION = "H100 SXM", 989.0, 0.4  # dense bf16 peak; assumed model FLOP utilisation


def second_epoch_rate(dm) -> float:
    """Images per second delivered by the training loader in its second epoch."""
    loader = dm.train_dataloader()
    rate = 0.0
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        start, images = time.perf_counter(), 0
        for batch in loader:
            images += batch["image"].shape[0]
        rate = images / (time.perf_counter() - start)
    return rate


def gpu_consumption(gmacs: float) -> float:
    """Training images/s of a model with ``gmacs`` multiply-adds per forward image: 2 FLOPs per multiply-add, and
    backward = 2x forward (so 6 FLOPs per multiply-add), at ``GPU_UTILISATION`` of the GPU's bf16 peak."""
    return GPU_BF16_TFLOPS * 1e12 * GPU_UTILISATION / (6 * gmacs * 1e9)


def measured_gmacs(name: str) -> float:
    import torch

    import langseg
    from langseg.profiling import count_macs

    torch.manual_seed(0)
    model = langseg.create_model(name).eval()
    image = torch.randn(1, 1, 224, 224)
    with torch.no_grad():
        text = model.encode_text(["One infected area in the upper left lung."])
        return count_macs(lambda: model(image, text)) / 1e9


def main() -> None:
    from benchmarks.common import image_benchmark_options, load_average, machine, write_section

    opts, images, repeats = image_benchmark_options(__doc__, 512, 128)
    import langseg
    from langseg.data.synthetic import write_generic_split
    from langseg.data import ImageTextMaskDataModule

    tmp = Path(tempfile.mkdtemp(prefix="langseg_loader_bench_"))
    rows = []
    for source in (512, 224):
        root = write_generic_split(tmp / f"png{source}", "train", images, source, np.random.default_rng(0))

        def module(cache: bool, workers: int = 2) -> ImageTextMaskDataModule:
            return ImageTextMaskDataModule(str(root), image_size=224, batch_size=16, num_workers=workers, cache=cache)

        start = time.perf_counter()
        module(True).dataset("train")
        build = time.perf_counter() - start
        rates: dict[str, list[float]] = {"before": [], "after": [], "in_process": []}
        for _ in range(repeats):
            rates["before"].append(second_epoch_rate(module(False)))
            rates["after"].append(second_epoch_rate(module(True)))
            rates["in_process"].append(second_epoch_rate(module(True, workers=0)))
        rows.append({"source": source, "build": build, **{k: statistics.median(v) for k, v in rates.items()}})
    names = [name for name in langseg.list_models() if not name.endswith("_small")]
    gmacs = {name: measured_gmacs(name) for name in names}
    fastest, slowest = min(gmacs, key=gmacs.get), max(gmacs, key=gmacs.get)
    need = {name: gpu_consumption(gmacs[name]) for name in (fastest, slowest)}
    command = "PYTHONPATH=. python benchmarks/loader.py" + (" --quick" if opts.quick else "")
    lines = [
        "## Training loader\n",
        f"Command: `{command}` ({machine()}; {load_average()} at the end of the run). `ImageTextMaskDataModule` "
        f"training loader alone: {images} images, 224x224, batch 16, 2 workers, second epoch; {repeats} alternated "
        f"repeats, medians. GPU consumption is estimated, not measured (no GPU was lent): training images/s = "
        f"{GPU_NAME} bf16 peak {GPU_BF16_TFLOPS:.0f} TFLOP/s x {GPU_UTILISATION:.0%} assumed utilisation / "
        f"(6 x multiply-adds per image at 224x224, measured: 2 FLOPs per multiply-add, backward twice the forward). "
        f"Fastest method: `{fastest}` ({gmacs[fastest]:.2f} GMACs) consumes ~{need[fastest]:,.0f} images/s; "
        f"slowest: `{slowest}` ({gmacs[slowest]:.2f} GMACs) ~{need[slowest]:,.0f} images/s.\n",
        "| source PNGs | before (decode every epoch) | after (loader cache) | speed-up | after / fastest method's "
        "consumption | after / slowest's | cache build (once) | cache, 0 workers (in the training process) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['source']}x{r['source']} | {r['before']:,.0f} img/s | {r['after']:,.0f} img/s | "
                     f"{r['after'] / r['before']:.1f}x | **{r['after'] / need[fastest]:.2f}x** | "
                     f"{r['after'] / need[slowest]:.2f}x | {r['build']:.1f} s | {r['in_process']:,.0f} img/s |")
    text = "\n".join(lines) + "\n\nTarget: the loader delivers >= 3x what the fastest method consumes.\n"
    sys.stdout.write(text)
    if not opts.quick:
        write_section(Path(opts.output), "loader", text)


if __name__ == "__main__":
    main()
