"""Training-loader throughput of ``ImageTextMaskDataModule`` with and without the loader cache, against what the
fastest and slowest methods consume per second on one modern GPU (estimated from their measured FLOPs).

    PYTHONPATH=. python benchmarks/loader.py            # full run, writes its section of docs/benchmarks.md
    PYTHONPATH=. python benchmarks/loader.py --quick    # 128 images, prints only

Two generic-format folders are generated in a temporary folder: 512x512 8-bit PNGs (like MosMedData+) and 224x224
(like QaTa-COV19). The training loader (224x224, batch 16, ``num_workers=2``, shuffled) runs 4 epochs; images/s is
that of the last 3 (workers started, page cache warm). Before: ``cache=False`` (2 worker processes decode and resize
every epoch); after: ``cache=True`` as shipped (the cache built beforehand, its one-off build time reported; read in
the training process), and the same cache read by 2 worker processes. The variants alternate, ``--repeats`` times;
medians.
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


def warm_epochs_rate(dm, epochs: int = 3) -> tuple[float, float]:
    """Images per second delivered by the training loader over ``epochs`` epochs after a first one (workers
    started, page cache warm), and the CPU milliseconds per batch the training process itself spent in them
    (reading, or receiving the workers' batches)."""
    loader = dm.train_dataloader()
    for batch in loader:
        pass
    start, start_cpu, images, batches = time.perf_counter(), time.process_time(), 0, 0
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            images += batch["image"].shape[0]
            batches += 1
    return images / (time.perf_counter() - start), 1000 * (time.process_time() - start_cpu) / batches


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

    class WorkersAlways(ImageTextMaskDataModule):
        """The datamodule with its cached split read by ``num_workers`` processes too (the variant not shipped)."""

        def loader_workers(self, dataset) -> int:
            return self.num_workers

    tmp = Path(tempfile.mkdtemp(prefix="langseg_loader_bench_"))
    rows = []
    for source in (512, 224):
        root = write_generic_split(tmp / f"png{source}", "train", images, source, np.random.default_rng(0))

        def module(cache: bool, kind: type = ImageTextMaskDataModule) -> ImageTextMaskDataModule:
            return kind(str(root), image_size=224, batch_size=16, num_workers=2, cache=cache)

        start = time.perf_counter()
        module(True).dataset("train")
        build = time.perf_counter() - start
        variants = {"before": lambda: module(False), "after": lambda: module(True),
                    "workers": lambda: module(True, WorkersAlways)}
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, make in variants.items():
                runs[name].append(warm_epochs_rate(make()))
        rows.append({"source": source, "build": build,
                     **{name: statistics.median(r for r, _ in v) for name, v in runs.items()},
                     **{f"{name}_cpu": statistics.median(c for _, c in v) for name, v in runs.items()}})
    names = [name for name in langseg.list_models() if not name.endswith("_small")]
    gmacs = {name: measured_gmacs(name) for name in names}
    fastest, slowest = min(gmacs, key=gmacs.get), max(gmacs, key=gmacs.get)
    need = {name: gpu_consumption(gmacs[name]) for name in (fastest, slowest)}
    command = "PYTHONPATH=. python benchmarks/loader.py" + (" --quick" if opts.quick else "")
    lines = [
        "## Training loader\n",
        f"Command: `{command}` ({machine()}; {load_average()} at the end of the run). `ImageTextMaskDataModule` "
        f"training loader alone (`num_workers=2`): {images} images, 224x224, batch 16, epochs 2 to 4; {repeats} "
        f"alternated repeats, medians. Before: `cache=False`, 2 worker processes decode every epoch. After: `cache=True` "
        f"as shipped: the cached split is read in the training process, no worker process (`loader_workers`); beside "
        f"it the same cache read by 2 worker processes. Training-process CPU: CPU time of the process that iterates the "
        f"loader per batch (reading, or receiving the workers' batches). GPU consumption is estimated, not measured "
        f"(no GPU was lent): training images/s = "
        f"{GPU_NAME} bf16 peak {GPU_BF16_TFLOPS:.0f} TFLOP/s x {GPU_UTILISATION:.0%} assumed utilisation / "
        f"(6 x multiply-adds per image at 224x224, measured: 2 FLOPs per multiply-add, backward twice the forward). "
        f"Fastest method: `{fastest}` ({gmacs[fastest]:.2f} GMACs) consumes ~{need[fastest]:,.0f} images/s; "
        f"slowest: `{slowest}` ({gmacs[slowest]:.2f} GMACs) ~{need[slowest]:,.0f} images/s.\n",
        "| source PNGs | before: decode, 2 workers | after: cache, in the training process (shipped) | speed-up | "
        "after / fastest method's consumption | after / slowest's | cache, 2 workers | 2 workers / fastest's | "
        "training-process CPU per batch: before / after / cache with 2 workers | cache build (once) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['source']}x{r['source']} | {r['before']:,.0f} img/s | {r['after']:,.0f} img/s | "
                     f"{r['after'] / r['before']:.1f}x | **{r['after'] / need[fastest]:.2f}x** | "
                     f"{r['after'] / need[slowest]:.2f}x | {r['workers']:,.0f} img/s | "
                     f"{r['workers'] / need[fastest]:.2f}x | {r['before_cpu']:.2f} / {r['after_cpu']:.2f} / "
                     f"{r['workers_cpu']:.2f} ms | {r['build']:.1f} s |")
    text = "\n".join(lines) + "\n\nTarget: the loader delivers >= 3x what the fastest method consumes.\n"
    sys.stdout.write(text)
    if not opts.quick:
        write_section(Path(opts.output), "loader", text)


if __name__ == "__main__":
    main()
