"""End-to-end checks of the ``langseg`` command (run as ``python -m langseg`` in a subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = ["--trainer.max_epochs", "1", "--data.init_args.num_train", "16", "--data.init_args.num_val", "8",
        "--data.init_args.num_test", "8", "--data.init_args.image_size", "32", "--data.init_args.batch_size", "8",
        "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false"]


def langseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "models")}  # makes test_base.TextGate importable
    return subprocess.run([sys.executable, "-m", "langseg", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_fit_then_test_prints_dice_miou_and_swapped_text(tmp_path):
    cfg = str(REPO / "configs" / "unet.yaml")
    fit = langseg("fit", "--config", cfg, *TINY, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "val/dice=" in fit.stderr + fit.stdout
    ckpt = tmp_path / "runs" / "unet" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    test = langseg("test", "--config", cfg, *TINY, "--ckpt_path", str(ckpt), cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    for key in ("test/dice", "test/miou", "test/dice_pooled", "test/dice_swapped_text"):
        assert key in test.stdout


def test_generic_folder_and_bf16_from_the_command_line(tmp_path, generic_folder):
    args = ["fit", "--config", str(REPO / "configs" / "unet.yaml"), "--trainer.max_steps", "2",
            "--trainer.precision", "bf16-mixed", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--data", "langseg.data.ImageTextMaskDataModule", "--data.root", str(generic_folder),
            "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
            "--optimizer", "SGD", "--optimizer.lr", "0.01"]
    run = langseg(*args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("args, message", [
    (["--data", "langseg.data.ImageTextMaskDataModule", "--data.root", "{tmp}/missing"], "is not a folder"),
    (["--model.init_args.bogus", "1"], "bogus"),
    (["--model", "langseg.models.NoSuchModel"], "NoSuchModel"),
    (["--model", "test_base.TextGate", "--model.text_encoder", "{tmp}/cxr-bert"], "cxr-bert' does not exist: pass"),
])
def test_bad_input_gives_one_clear_error(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    run = langseg("fit", "--config", str(REPO / "configs" / "unet.yaml"), *TINY, *args, cwd=tmp_path)
    assert run.returncode != 0 and message in run.stderr
    assert "Traceback" not in run.stderr


def test_data_error_inside_a_worker_is_one_line(tmp_path, generic_folder):
    (generic_folder / "masks" / "train_0.png").write_bytes((generic_folder / "masks" / "train_0.png").read_bytes())
    from PIL import Image
    import numpy as np
    Image.fromarray((np.arange(40 * 40).reshape(40, 40) % 3).astype(np.uint8)).save(generic_folder / "masks" / "train_0.png")
    run = langseg("fit", "--config", str(REPO / "configs" / "unet.yaml"), *TINY, "--data",
                  "langseg.data.ImageTextMaskDataModule", "--data.root", str(generic_folder), "--data.image_size", "32",
                  "--data.batch_size", "8", "--data.num_workers", "1", "--trainer.logger", "false", cwd=tmp_path)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("langseg: error: ") and "train_0.png: mask has values {0, 1, 2}" in last


def test_list_models():
    run = subprocess.run([sys.executable, "-m", "langseg", "list-models"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "unet" in run.stdout.split()
