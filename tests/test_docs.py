"""The custom method in docs/extending.md runs as written: from Python and with the documented CLI command."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import types
from pathlib import Path

import lightning as L
import torch
import yaml

import langseg
from langseg.data import SyntheticReferringDataModule
from tests.test_cli import TINY

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "extending.md"
TEXT = DOC.read_text()
CODE = re.search(r"```python\n(.*?)```", TEXT, re.S).group(1)


def test_extending_example_is_short_registers_trains_with_its_own_loss_and_augmentation():
    assert len(CODE.strip().splitlines()) <= 40
    module = types.ModuleType("my_methods")
    exec(compile(CODE, str(DOC), "exec"), module.__dict__)
    assert "film_unet" in langseg.list_models()
    torch.manual_seed(0)
    model = langseg.create_model("film_unet", text_encoder="tiny", max_text_length=16)
    assert type(model.augmentation).__name__ == "RandomGamma" and model.text_encoder.max_length == 16
    seen = []
    model.augmentation.register_forward_hook(lambda m, args, out: seen.append(torch.equal(args[0], out[0])))
    dm = SyntheticReferringDataModule(num_train=16, num_val=8, num_test=8, image_size=32, batch_size=8,
                                      num_workers=0)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, dm)
    assert seen == [False] * 4  # 2 epochs x 2 batches, each image changed by the augmentation
    assert {"train/loss", "train/dice", "train/focal"} <= set(trainer.callback_metrics)
    (result,) = trainer.test(model, dm, verbose=False)
    assert 0.0 <= result["test/dice_swapped_text"] <= 1.0 and "test/dice" in result


def test_documented_cli_command_trains_the_example_with_a_base_option_set(tmp_path):
    command = re.search(r"```bash\n(PYTHONPATH=\. langseg fit .*?)\n```", TEXT, re.S).group(1)
    (tmp_path / "my_methods.py").write_text(CODE)
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    env_part, *args = shlex.split(command)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([shutil.which(args[0]) or args[0], *args[1:], *TINY], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert env_part == "PYTHONPATH=." and run.returncode == 0, run.stderr[-3000:]
    config = yaml.safe_load((tmp_path / "runs" / "unet" / "version_0" / "config.yaml").read_text())
    assert config["model"]["class_path"] == "my_methods.FiLMUNet"
    assert config["model"]["init_args"]["max_text_length"] == 16
    assert (tmp_path / "runs" / "unet" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_every_test_named_in_the_reliability_table_exists():
    """Each case in docs/reliability.md names a test function (and parameter id) that exists."""

    text = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "tests").rglob("test_*.py"))
    named = set(re.findall(r"`(?:tests/[\w/]+\.py::)?(test_\w+)", text))
    assert len(named) > 30
    missing = sorted(name for name in named if f"def {name}(" not in sources)
    assert not missing, missing
    cases = re.findall(r"^\| (\d+) \|", text, re.M)
    assert [int(c) for c in cases] == list(range(1, len(cases) + 1)) and len(cases) >= 60
