"""Reliability guarantees (docs/reliability.md): determinism, exact resume, DDP evaluation equal to one process,
stride and checkpoint checks. Mixed precision for every model is in tests/models/test_contract.py."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import langseg
from langseg.data import SyntheticReferringDataModule
from langseg.errors import ConfigError
from langseg.models import UNetBaseline
from tests.tiny_models import TINY

REPO = Path(__file__).resolve().parent.parent

def _data(**kw) -> SyntheticReferringDataModule:
    args = dict(num_train=16, num_val=8, num_test=8, image_size=32, batch_size=8, num_workers=0)
    return SyntheticReferringDataModule(**{**args, **kw})


def _trainer(**kw) -> L.Trainer:
    args = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    return L.Trainer(**{**args, **kw})


def _fit(tmp, max_steps, ckpt=None, every=None):
    L.seed_everything(0, verbose=False)
    model = UNetBaseline(decoder_channels=(16, 8, 8, 8, 8))
    callbacks = [ModelCheckpoint(dirpath=tmp, every_n_train_steps=every, save_top_k=-1)] if every else []
    trainer = _trainer(max_steps=max_steps, callbacks=callbacks, enable_checkpointing=bool(every))
    trainer.fit(model, _data(num_train=24), ckpt_path=ckpt)
    return model, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_same_seed_same_config_same_metrics(tmp_path):
    (_, first), (_, second) = _fit(tmp_path / "a", 6), _fit(tmp_path / "b", 6)
    assert first == second and "val/dice" in first


@pytest.mark.parametrize("k", [3, 4])  # at an epoch boundary (3 batches per epoch) and inside an epoch
def test_resume_ends_with_the_same_weights_and_metrics(tmp_path, k):
    full, full_metrics = _fit(tmp_path / "full", 8)
    _fit(tmp_path / "part", k, every=k)
    (ckpt,) = (tmp_path / "part").glob("*.ckpt")
    resumed, resumed_metrics = _fit(tmp_path / "resumed", 8, ckpt=str(ckpt))
    for key, value in full.state_dict().items():
        assert torch.allclose(value.float(), resumed.state_dict()[key].float()), key
    assert full_metrics == resumed_metrics


def test_image_size_not_divisible_by_the_stride_is_refused():
    with pytest.raises(ConfigError, match=r"data.image_size=40 is not a multiple of 32"):
        _trainer(max_steps=1).fit(UNetBaseline(decoder_channels=(16, 8, 8, 8, 8)), _data(image_size=40))


def test_checkpoint_of_another_model_is_refused(tmp_path):
    model = langseg.create_model("early_fusion", **TINY["early_fusion"])
    trainer = _trainer(max_steps=1, limit_val_batches=1)
    trainer.fit(model, _data())
    trainer.save_checkpoint(tmp_path / "ef.ckpt")
    with pytest.raises(ConfigError, match="holds a EarlyFusionSegmenter model, but the config builds UNetBaseline"):
        _trainer().test(UNetBaseline(decoder_channels=(16, 8, 8, 8, 8)), _data(), ckpt_path=str(tmp_path / "ef.ckpt"))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "langseg", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _logged(stdout: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"│\s+(test/\S+)\s+│\s+([0-9.e-]+)\s+│", stdout)}


def _new_run(root: Path, known: set[Path]) -> Path:
    """The one run folder (``version_<n>``) under ``root`` that is not in ``known``; adds it there."""
    (run,) = set(root.glob("version_*")) - known
    known.add(run)
    return run


@pytest.mark.parametrize("config, extra", [
    ("unet.yaml", []),
    ("early_fusion_unet.yaml", ["--model.text_encoder", "tiny"]),
])
def test_ddp_on_two_cpu_processes_fits_and_tests_like_one_process(tmp_path, config, extra):
    common = ["--config", str(REPO / "configs" / config), *extra, "--trainer.enable_progress_bar", "false",
              "--data.num_train", "16", "--data.num_val", "6", "--data.num_test", "7", "--data.image_size", "32",
              "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.accelerator", "cpu"]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    root, runs = tmp_path / "runs" / config.removesuffix(".yaml"), set()  # the config's default_root_dir
    _cli("fit", *common, *ddp, "--trainer.max_steps", "2", cwd=tmp_path)
    fit_run = _new_run(root, runs)  # every output of a run under <default_root_dir>/version_<n>/
    ckpt = fit_run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (fit_run / "metrics.csv").is_file()
    one = _cli("test", *common, "--trainer.devices", "1", "--ckpt_path", str(ckpt), cwd=tmp_path)
    one_summary = json.loads((_new_run(root, runs) / "results" / "test_summary.json").read_text())
    two = _cli("test", *common, *ddp, "--ckpt_path", str(ckpt), cwd=tmp_path)
    two_summary = json.loads((_new_run(root, runs) / "results" / "test_summary.json").read_text())
    assert not (root / "checkpoints").exists() and not (root / "results").exists()
    logged_one, logged_two = _logged(one.stdout), _logged(two.stdout)
    assert {"test/dice", "test/dice_pooled", "test/dice_swapped_text", "test/dice_no_text", "test/dice@text_short",
            "test/dice_by_category/category=side"} <= set(logged_one)
    for key, value in logged_one.items():
        if key != "test/loss":  # the loss is a mean of batch means, and the batches differ
            assert abs(value - logged_two[key]) < 1e-5, key
    assert two_summary["images"] == one_summary["images"] == 7
    assert abs(two_summary["dice"] - one_summary["dice"]) < 1e-6
