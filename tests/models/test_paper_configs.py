"""The paper configs run as their headers say, with the text-encoder folder the official repositories ship."""
from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import EarlyStopping
from PIL import Image

from langseg.blocks.augmentation import JointAugmentation, PhotometricAugmentation
from langseg.cli import main
from langseg.data.transforms import equalize_histogram, zscore
from langseg.lightning_cli import build_cli
from tests.hf_folders import write_convnext_folder, write_cxr_bert_folder
from tests.test_documented_commands import documented_commands

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--model.init_args.encoder_name", "convnext_atto", "--data", "configs/data/synthetic.yaml",
         "--data.init_args.image_size", "64", "--data.init_args.num_workers", "0"]


@pytest.mark.parametrize("config", ["guidedecoder_paper", "himix_paper"])
def test_paper_config_takes_the_official_folders_as_its_header_says(config, tmp_path, monkeypatch, one_thread):
    mlm = write_cxr_bert_folder(tmp_path / "BiomedVLP-CXR-BERT-specialized")
    hf = write_convnext_folder(tmp_path / "convnext", (2, 2, 6, 2), (40, 80, 160, 320))  # ConvNeXt-Atto's shape
    monkeypatch.chdir(REPO)
    cli = build_cli(["--config", f"configs/{config}.yaml", "--model.text_encoder",
                     str(tmp_path / "BiomedVLP-CXR-BERT-specialized"), "--model.encoder_weights",
                     str(tmp_path / "convnext"), *SMALL], run=False)
    model = cli.model
    assert type(model.text_encoder.model).__name__ == "BertModel" and model.text_dim == mlm.config.hidden_size
    stem = model.net.encoder.state_dict()["stem_0.weight"]
    assert torch.equal(stem, hf.embeddings.patch_embeddings.weight)
    texts = ["Bilateral pulmonary infection, two infected areas.", "One infected area in the left lung."]
    with torch.no_grad():
        logits = model.segment(torch.rand(2, model.in_channels, 64, 64), texts)["logits"]
    assert logits.shape == (2, 1, 64, 64) and torch.isfinite(logits).all()


def test_reclmis_official_config_trains_with_a_clip_folder_as_its_header_says(tmp_path, monkeypatch, one_thread):
    from langseg.models import RecLMIS
    from tests.hf_folders import write_clip_folder

    clip = write_clip_folder(tmp_path / "clip-vit-base-patch32")
    monkeypatch.chdir(REPO)
    cli = build_cli(["--config", "configs/reclmis_official.yaml", "--model.text_encoder",
                     str(tmp_path / "clip-vit-base-patch32"), "--model.widths", "[4, 8, 16, 32, 32]",
                     "--model.position_grid", "4", "--data", "configs/data/synthetic.yaml",
                     "--data.init_args.image_size", "64", "--data.init_args.num_workers", "0"], run=False)
    model = cli.model
    assert isinstance(model, RecLMIS) and model.net.interaction_form == "official"
    assert type(model.text_encoder.model).__name__ == "CLIPTextModel" and model.text_dim == clip.config.hidden_size
    hp = model.hparams
    assert (hp.aux_losses, hp.reconstructor, hp.ccl_softmax, hp.ccl_padding, hp.mask_topup, hp.head_dropout,
            hp.num_heads, hp.recon_depth, hp.ccl_temperature, hp.seg_weight, hp.dice_weight, hp.bce_weight,
            hp.max_text_length) == ("official", "official", "twice", "zero", True, 0.0, 4, 4, 0.01, 5.0, 0.5, 0.5, 18)
    (stopping,) = [c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert cli.trainer.max_epochs == 2000  # Config_covid19: epochs 2000, early_stopping_patience 100
    assert (stopping.monitor, stopping.mode, stopping.patience) == ("val/dice", "max", 101)
    assert len(model.net.vision_reconstructor.context_layers) == len(model.net.vision_reconstructor.query_layers) == 4
    optimization = model.configure_optimizers()
    optimizer, scheduler = optimization["optimizer"], optimization["lr_scheduler"]
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 3e-4
    assert optimizer.defaults["weight_decay"] == 0.0  # official: Adam without weight decay (Config_covid19)
    assert type(scheduler) is torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
    assert (scheduler.T_0, scheduler.T_mult, scheduler.eta_min) == (10, 1, 1e-4)
    augmentation = model.augmentation  # Load_Dataset.py's photometric values
    assert isinstance(augmentation, PhotometricAugmentation) and augmentation.blur.p == augmentation.colour.p == 0.5
    assert tuple(augmentation.blur._param_generator.sigma) == (0.5, 1.0)
    jiggle = augmentation.colour
    assert (jiggle.brightness, jiggle.contrast, jiggle.saturation, jiggle.hue) == (0.1255, 0.5, 0.5, 0.1)
    texts = ["Bilateral pulmonary infection, two infected areas.", "One infected area in the left lung."]
    image, mask = torch.rand(2, model.in_channels, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    text = model.encode_text(texts)
    losses = model.compute_loss(model.train()(image, text), mask, text)
    losses["loss"].backward()
    assert {"t2v", "v2t", "ccl"} <= set(losses) and torch.isfinite(losses["loss"])
    with torch.no_grad():
        assert model.eval().segment(image, texts)["logits"].shape == (2, 1, 64, 64)


def test_reclmis_official_mosmed_command_sets_the_official_schedule_epochs_patience_and_batch(monkeypatch, capsys):
    (command,) = [c for src, c in documented_commands() if src == "reclmis_official.yaml" and "mosmed" in c]
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main([*shlex.split(command)[1:], "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    scheduler = config["model"]["init_args"]["lr_scheduler"]
    assert scheduler["class_path"] == "langseg.optim.ExponentialLRWithFloor"
    assert (scheduler["init_args"]["gamma"], scheduler["init_args"]["floor"]) == (0.99, 0.1)  # max(0.99**epoch, 0.1)
    stopping = config["trainer"]["callbacks"][-1]
    assert stopping["class_path"].endswith("EarlyStopping") and stopping["init_args"]["monitor"] == "val/dice"
    assert stopping["init_args"]["patience"] == 31  # Config_MosMedPlus: early_stopping_patience 30, compared with >
    assert config["trainer"]["max_epochs"] == 400 and config["data"]["init_args"]["batch_size"] == 20
    model = config["model"]["init_args"]
    assert (model["recon_depth"], model["vision_mask_ratio"], model["head_dropout"]) == (3, 0.3, 0.5)


@pytest.mark.parametrize("config, intensity", [("guidedecoder_paper", "histogram"), ("himix_paper", "zscore")])
def test_paper_config_prepares_the_data_as_the_official_code(config, intensity, generic_folder, monkeypatch,
                                                             one_thread):
    monkeypatch.chdir(REPO)
    cli = build_cli(["--config", f"configs/{config}.yaml", "--model.init_args.encoder_name", "convnext_atto",
                     "--data.init_args.root", str(generic_folder), "--data.init_args.image_size", "64",
                     "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
                     "--data.init_args.cache", "false"], run=False)  # as decoded; the cache: tests/data/test_cache.py
    dm = cli.datamodule
    assert (dm.preprocessing()["resize"], dm.preprocessing()["intensity"], dm.zoom, dm.zoom_p) == (
        "bicubic", intensity, (0.95, 1.2), 0.1)
    dm.setup("fit")
    assert isinstance(dm.dataset("train").augmentation, JointAugmentation) and dm.dataset("val").augmentation is None
    film = np.asarray(Image.open(dm.dataset("val").rows[0]["image"]), np.float32) / 255  # gray, 40x40
    pixels = F.interpolate(torch.from_numpy(film).expand(1, 3, -1, -1), size=(64, 64), mode="bicubic")[0]
    expected = equalize_histogram(pixels) if intensity == "histogram" else zscore(pixels)
    assert torch.allclose(dm.dataset("val")[0]["image"], expected, atol=1e-5)
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        logits = cli.model.segment(batch["image"], batch["text"])["logits"]
    assert logits.shape == (4, 1, 64, 64) and torch.isfinite(logits).all()
    mosmed = build_cli(["--config", f"configs/{config}.yaml", "--model.init_args.encoder_name", "convnext_atto",
                        "--data", "configs/data/mosmed.yaml"], run=False).datamodule
    assert mosmed.root.name == "mosmedplus" and mosmed.preprocessing() == {**dm.preprocessing(), "image_size": 224}
