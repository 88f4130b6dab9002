"""``langseg compare`` trains (in training mode) and tests each config and writes a table with one row per config."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
import yaml

import langseg
from langseg.cli import main
from langseg.compare import inference_macs
from langseg.profiling import count_macs
from tests.tiny_models import tiny_overrides

REPO = Path(__file__).resolve().parent.parent


def test_compare_writes_one_row_per_config_and_trains_in_training_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fpn = yaml.safe_load((REPO / "configs" / "unet.yaml").read_text())
    fpn["model"]["init_args"] = {"arch": "FPN", "encoder_name": "resnet18"}
    fpn["data"] = str(REPO / "configs" / "data" / "synthetic.yaml")
    (tmp_path / "fpn.yaml").write_text(yaml.safe_dump(fpn))
    tiny = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--data.init_args.num_train", "16", "--data.init_args.num_val", "8", "--data.init_args.num_test", "8",
            "--data.init_args.image_size", "32", "--data.init_args.num_workers", "0",
            "--trainer.callbacks+", "tests.test_compare.RequireTrainingMode"]
    main(["compare", "--configs", str(REPO / "configs" / "unet.yaml"), "fpn.yaml", "--output", "cmp", "--", *tiny])
    table = (tmp_path / "cmp" / "comparison.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| `")]
    assert len(rows) == 2 and "unet.yaml" in rows[0] and "fpn.yaml" in rows[1]
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert data[0]["params_m"] != data[1]["params_m"] and all(r["gflops"] > 0 for r in data)
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000
    assert (tmp_path / "cmp" / "curves.png").stat().st_size > 1000  # every run's curves in one figure
    for stem in ("unet", "fpn"):  # each config's run under the output folder
        assert (tmp_path / "cmp" / stem / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp", "fpn.yaml"]


class RequireTrainingMode(L.Callback):
    """Fails the run if any module of the model is in eval mode during a training step."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        in_eval = [name for name, module in pl_module.named_modules() if not module.training]
        assert not in_eval, f"modules in eval mode during training: {in_eval[:5]}"


def test_the_table_s_flops_leave_the_text_encoder_out():
    model = langseg.create_model("lsms", **tiny_overrides("lsms"))
    image = torch.rand(1, 1, 64, 64)  # the coarsest stage 2 x 2: instance norm needs more than one pixel
    text = "One infected area in the upper left lung."
    macs = inference_macs(model, image, text)
    assert all(module.training for module in model.net.modules())  # back in training mode for fit()
    model.eval()
    with torch.no_grad():
        network_only = count_macs(lambda: model.net(image, model.encode_text([text])))
        encoder_only = count_macs(lambda: model.encode_text(["A text the cache has not seen."]))
    assert encoder_only > 0 and macs == network_only  # the encoder's multiply-adds are not in the table
