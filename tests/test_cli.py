"""End-to-end checks of the ``langseg`` command, run as a user runs it (the console script, in a subprocess)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
LANGSEG = shutil.which("langseg") or "langseg"
TINY = ["--trainer.max_epochs", "1", "--data.init_args.num_train", "16", "--data.init_args.num_val", "8",
        "--data.init_args.num_test", "8", "--data.init_args.image_size", "32", "--data.init_args.batch_size", "8",
        "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false"]


def langseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # makes tests.tiny_models.TextGate importable
    return subprocess.run([LANGSEG, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_readme_fit_then_test_prints_dice_miou_and_swapped_text(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    fit = langseg("fit", "--config", "configs/unet.yaml", *TINY, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "val/dice=" in fit.stderr and "last checkpoint: runs/unet/version_0/checkpoints/last.ckpt" in fit.stderr
    assert "eval mode" not in fit.stderr  # Lightning's check that every module trains in training mode
    lines = fit.stderr.splitlines()
    assert len(lines) == len(set(lines)) and "UNetBaseline: 12.45 M parameters; run folder" in fit.stderr
    for noise in ("Tip:", "Total FLOPs", "LeafSpec", "Traceback"):
        assert noise not in fit.stderr
    test = langseg("test", "--config", "configs/unet.yaml", "--ckpt_path", "runs/unet/version_0/checkpoints/last.ckpt",
                   *TINY, cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    for key in ("test/dice", "test/miou", "test/dice_pooled", "test/dice_swapped_text", "test/hd95"):
        assert key in test.stdout
    assert (tmp_path / "runs" / "unet" / "version_1" / "results" / "test_summary.json").is_file()
    other = langseg("test", "--config", "configs/lsms.yaml", "--ckpt_path", "runs/unet/version_0/checkpoints/last.ckpt",
                    *TINY, cwd=tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "holds a UNetBaseline model, but the config builds LSMS" in other.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs" / "lsms").exists()  # refused before anything ran or was written


def test_default_root_dir_moves_every_output_and_runs_never_overwrite(tmp_path):
    cfg, root = str(REPO / "configs" / "unet.yaml"), tmp_path / "exp1"
    move = ["--trainer.default_root_dir", str(root)]
    for _ in range(2):
        assert langseg("fit", "--config", cfg, *TINY, *move, cwd=tmp_path).returncode == 0
    ckpt = root / "version_0" / "checkpoints" / "last.ckpt"
    for command in ("test", "predict"):
        run = langseg(command, "--config", cfg, *TINY, *move, "--ckpt_path", str(ckpt), cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1", "version_2", "version_3"]
    for fit_run in ("version_0", "version_1"):
        assert {"config.yaml", "metrics.csv", "curves.png"} <= {p.name for p in (root / fit_run).iterdir()}
        assert (root / fit_run / "checkpoints" / "last.ckpt").is_file()
    assert (root / "version_2" / "results" / "test_summary.json").is_file()
    assert len(list((root / "version_3" / "predictions" / "masks").glob("*.png"))) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp1"]  # nothing written to the working folder


def test_generic_folder_bf16_and_an_optimizer_from_the_command_line(tmp_path, generic_folder):
    args = ["fit", "--config", str(REPO / "configs" / "unet.yaml"), "--trainer.max_steps", "2",
            "--trainer.precision", "bf16-mixed", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--data", "langseg.data.ImageTextMaskDataModule", "--data.root", str(generic_folder),
            "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
            "--model.optimizer", "SGD", "--model.optimizer.lr", "0.01", "--model.lr_scheduler", "StepLR",
            "--model.lr_scheduler.step_size", "1"]
    run = langseg(*args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "runs" / "unet" / "checkpoints" / "last.ckpt").is_file()  # no logger: under default_root_dir


def test_data_error_inside_a_worker_is_one_line(tmp_path, generic_folder):
    import numpy as np
    from PIL import Image

    Image.fromarray((np.arange(40 * 40).reshape(40, 40) % 3).astype(np.uint8)).save(generic_folder / "masks" / "train_0.png")
    run = langseg("fit", "--config", str(REPO / "configs" / "unet.yaml"), *TINY, "--data",
                  "langseg.data.ImageTextMaskDataModule", "--data.root", str(generic_folder), "--data.image_size", "32",
                  "--data.batch_size", "8", "--data.num_workers", "1", "--trainer.logger", "false", cwd=tmp_path)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("langseg: error: ") and "train_0.png: mask has values {0, 1, 2}" in last


def test_help_lists_every_command_and_list_models_lists_the_variants(tmp_path):
    help_text = langseg("--help", cwd=tmp_path).stdout
    for command in ("fit", "validate", "test", "predict", "list-models", "data", "compare", "convert", "demo"):
        assert f"    {command}" in help_text
    names = langseg("list-models", cwd=tmp_path).stdout.split()
    assert {"unet", "unet_small", "lsms", "lsms_small", "himix_small"} <= set(names)


def test_a_cli_built_from_args_ignores_the_command_line_without_lightnings_warning(monkeypatch, recwarn):
    """``langseg compare``/``convert`` build one CLI per config while their own command line is in sys.argv."""
    import sys

    from langseg.lightning_cli import build_cli

    argv = ["langseg", "compare", "--configs", "configs/unet.yaml", "--output", "runs/x"]
    monkeypatch.setattr(sys, "argv", list(argv))
    cli = build_cli(["--config", str(REPO / "configs" / "unet.yaml"), "--trainer.logger", "false"], run=False)
    assert cli.trainer.max_epochs == 6 and sys.argv == argv
    assert not [w for w in recwarn if "args parameter is intended" in str(w.message)]
