"""Prediction throughput: ``langseg predict``'s loop (loader, model, masks and overlays written) against the bare
forward pass of the same model on the same batches.

    PYTHONPATH=. python benchmarks/prediction.py            # full run, writes its section of docs/benchmarks.md
    PYTHONPATH=. python benchmarks/prediction.py --quick    # 32 images, one repeat, prints only

Data: a generic-format folder of 512x512 8-bit PNGs with masks (like MosMedData+), generated in a temporary
folder and read through the loader cache (built before the timings); the model: the paper-size U-Net (``unet``, random initialisation, so its masks are noisy: a worst case for
PNG compression) at 224x224, batch 16, ``num_workers=2`` (the cached split is read in the predicting process: no
worker process; the section says how many the loader used). The predict loop is ``Trainer.predict`` with the
``PredictionWriter`` that ``langseg predict`` registers, timed from ``on_predict_start`` to the end of
``on_predict_end`` (every file written); start-up (imports, checkpoint loading) is left out. Three variants
run interleaved in one process, ``--repeats`` times; the reported numbers are medians.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time

import numpy as np
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parent.parent


class LoopTimer(L.Callback):
    """Wall and CPU seconds (every thread of the process) from the start of the predict loop to the end of
    ``on_predict_end`` (listed after the writer)."""

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = (time.perf_counter(), time.process_time())

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = (time.perf_counter() - self.start[0], time.process_time() - self.start[1])


def inline_writer(output_dir: Path) -> Any:
    """The ``PredictionWriter`` with its files written on the prediction loop itself (how it wrote before)."""
    from langseg.callbacks import PredictionWriter

    class Inline:
        def submit(self, job) -> None:
            job()

        def close(self, raise_error: bool = True) -> None:
            pass

    class InlinePredictionWriter(PredictionWriter):
        def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self._writer = Inline()

    return InlinePredictionWriter(str(output_dir))


def predict_seconds(model, dm, writer) -> tuple[float, float]:
    timer = LoopTimer()
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[writer, timer])
    trainer.predict(model, dm, return_predictions=False)
    return timer.seconds


@torch.no_grad()
def bare_seconds(model, batches: list[dict]) -> tuple[float, float]:
    """Wall and CPU seconds of the forward passes alone."""
    start = (time.perf_counter(), time.process_time())
    for batch in batches:
        model.segment(batch["image"], batch["text"])
    return time.perf_counter() - start[0], time.process_time() - start[1]


def png_encoding(files: list[Path], level: int) -> dict[str, float]:
    """Median CPU milliseconds to encode each of ``files``' pixels as a PNG at zlib ``level`` with Pillow and with
    ``langseg.files.png_bytes`` (alternating), and the two sizes in bytes, summed."""
    import io

    from PIL import Image

    from langseg.files import png_bytes

    def pillow(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    times: dict[str, list[float]] = {"pillow": [], "png_bytes": []}
    sizes = {"pillow": 0, "png_bytes": 0}
    for file in files:
        with Image.open(file) as image:
            pixels = np.asarray(image)
        for name, encode in (("pillow", pillow), ("png_bytes", lambda p: png_bytes(p, level))):
            start = time.process_time()
            sizes[name] += len(encode(pixels))
            times[name].append(1000 * (time.process_time() - start))
    return {**{f"{name}_ms": statistics.median(t) for name, t in times.items()},
            **{f"{name}_bytes": size for name, size in sizes.items()}}


def main() -> None:
    from benchmarks.common import image_benchmark_options, load_average, machine, write_section

    opts, images, repeats = image_benchmark_options(__doc__, 96, 32)
    import langseg
    from langseg.data.synthetic import write_generic_split
    from langseg.callbacks import PredictionWriter
    from langseg.data import ImageTextMaskDataModule

    root = Path(tempfile.mkdtemp(prefix="langseg_predict_bench_"))
    write_generic_split(root / "data", "test", images, 512, np.random.default_rng(0))
    dm = ImageTextMaskDataModule(str(root / "data"), image_size=224, batch_size=16, num_workers=2)
    torch.manual_seed(0)
    model = langseg.create_model("unet").eval()
    dm.setup("predict")
    loader = dm.predict_dataloader()
    batches = [dm.on_after_batch_transfer(batch, 0) for batch in loader]
    shipped = PredictionWriter()
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "threaded": [], "inline": []}
    for k in range(repeats):
        times["bare"].append(bare_seconds(model, batches))
        times["threaded"].append(predict_seconds(model, dm, PredictionWriter(str(root / f"out_t{k}"))))
        times["inline"].append(predict_seconds(model, dm, inline_writer(root / f"out_i{k}")))
    overlays = sorted((root / "out_t0" / "overlays").glob("*.png"))
    written = len(overlays)
    encode = png_encoding(overlays, shipped.overlay_compress_level)
    rate = {name: images / statistics.median(wall for wall, _ in t) for name, t in times.items()}
    cpu = {name: 1000 * statistics.median(c for _, c in t) / images for name, t in times.items()}
    ratios = [b / t for (b, _), (t, _) in zip(times["bare"], times["threaded"])]
    command = "PYTHONPATH=. python benchmarks/prediction.py" + (" --quick" if opts.quick else "")
    text = "\n".join([
        "## Prediction pipeline\n",
        f"Command: `{command}` ({machine()}; {load_average()} at the end of the run). {images} images of "
        f"512x512 (PNG, with masks, read from the loader cache), paper-size U-Net at 224x224, batch 16, "
        f"`num_workers=2` ({loader.num_workers} loader worker processes: a cached split is read in the predicting "
        f"process); masks written at PNG level {shipped.mask_compress_level}, overlays at level "
        f"{shipped.overlay_compress_level} (`PredictionWriter`'s defaults); {repeats} "
        f"interleaved repeats, medians. Every run wrote {written} masks and {written} overlays.\n",
        "| variant | images/s | vs bare forward | CPU ms per image (all threads) | bare forward's CPU / this |",
        "|---|---|---|---|---|",
        f"| bare forward (`model.segment` on the same batches, pre-loaded) | {rate['bare']:.2f} | 1.00 | "
        f"{cpu['bare']:.0f} | 1.00 |",
        f"| `langseg predict` loop, files written on a writer thread (now) | {rate['threaded']:.2f} | "
        f"**{rate['threaded'] / rate['bare']:.2f}x** | {cpu['threaded']:.0f} | {cpu['bare'] / cpu['threaded']:.2f} |",
        f"| `langseg predict` loop, files written on the loop | {rate['inline']:.2f} | "
        f"{rate['inline'] / rate['bare']:.2f}x | {cpu['inline']:.0f} | {cpu['bare'] / cpu['inline']:.2f} |",
        "",
        f"Per-repeat ratio of the writer-thread loop to the bare forward: "
        f"{', '.join(f'{r:.2f}' for r in ratios)} (target >= 0.8x). CPU time counts the work whatever else runs "
        f"on the machine: where the forward pass keeps both cores busy, images/s of the loop over the bare forward's "
        f"tends to the ratio of CPU times, while other jobs make the wall-clock ratio drift (the writer thread then "
        f"takes its CPU from them).\n",
        f"PNG encoding of the {written} overlays at level {shipped.overlay_compress_level} (the same pixels; CPU "
        f"time, median per overlay): Pillow {encode['pillow_ms']:.1f} ms, {encode['pillow_bytes'] / 1e6:.1f} MB "
        f"in all; `langseg.files.png_bytes` (what `PredictionWriter` writes with) {encode['png_bytes_ms']:.1f} ms, "
        f"{encode['png_bytes_bytes'] / 1e6:.1f} MB.\n",
    ])
    sys.stdout.write(text)
    if not opts.quick:
        write_section(Path(opts.output), "prediction", text)


if __name__ == "__main__":
    main()
