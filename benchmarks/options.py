"""Speed options on the same training run: fp32, bf16-mixed, channels-last, torch.compile.

    PYTHONPATH=. python benchmarks/options.py            # writes docs/benchmarks/options.md
    PYTHONPATH=. python benchmarks/options.py --quick    # fp32 only, 2 steps per epoch; prints only

U-Net (resnet18) on the synthetic data, 64x64, batch 32, 2 epochs of 8 steps; the median step time of
the second epoch (batch start to batch start) for each option, one fresh model each.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L

import langseg
from benchmarks.common import SecondEpochTimer, machine
from langseg.callbacks import PerformanceOptions
from langseg.data import SyntheticReferringDataModule

OPTIONS = [("fp32", "32-true", {}), ("bf16-mixed", "bf16-mixed", {}), ("channels-last", "32-true", {"channels_last": True}),
           ("torch.compile", "32-true", {"compile": True})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fp32 only, 64 training images; prints only")
    args = parser.parse_args()
    rows = []
    for name, precision, opts in OPTIONS[:1] if args.quick else OPTIONS:
        L.seed_everything(0, verbose=False)
        timer = SecondEpochTimer()
        dm = SyntheticReferringDataModule(num_train=64 if args.quick else 256, num_val=32, num_test=32, image_size=64,
                                          batch_size=32, num_workers=0)
        trainer = L.Trainer(max_epochs=2, precision=precision, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, limit_val_batches=1,
                            callbacks=[PerformanceOptions(**opts), timer])
        trainer.fit(langseg.create_model("unet_small"), dm)  # configs/unet.yaml's U-Net: decoder 128 .. 8
        step = timer.median_step()
        rows.append(f"| {name} | {1000 * step:.0f} | {float(trainer.callback_metrics['train/loss']):.3f} |")
    command = "PYTHONPATH=. python benchmarks/options.py" + (" --quick" if args.quick else "")
    text = "\n".join([
        "# Speed options", "", f"Machine: {machine()}. Command: `{command}`.", "",
        "U-Net (resnet18), synthetic data 64x64, batch 32, median training step of the second epoch "
        "(each option on a fresh model; all runs finish with a finite loss).", "",
        "| option | step (ms) | last train/loss |", "|---|---|---|", *rows, ""])
    sys.stdout.write(text)
    if not args.quick:
        Path(__file__).resolve().parent.parent.joinpath("docs", "benchmarks", "options.md").write_text(text)


if __name__ == "__main__":
    main()
