"""The custom method in docs/extending.md runs as written."""
from __future__ import annotations

import re
import types
from pathlib import Path

import lightning as L
import torch

import langseg
from langseg.data import SyntheticReferringDataModule

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


def test_extending_example_is_short_registers_and_trains():
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) < 50
    module = types.ModuleType("extending_example")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    assert "film_unet" in langseg.list_models()
    torch.manual_seed(0)
    model = langseg.create_model("film_unet", text_encoder="tiny", lr=3e-3)
    dm = SyntheticReferringDataModule(num_train=16, num_val=8, num_test=8, image_size=32, batch_size=8,
                                      num_workers=0)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, dm)
    losses = trainer.callback_metrics
    assert torch.isfinite(losses["train/loss"])
    (result,) = trainer.test(model, dm, verbose=False)
    assert 0.0 <= result["test/dice_swapped_text"] <= 1.0 and "test/dice" in result
