"""The paper configs run as their headers say, with the text-encoder folder the official repositories ship."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from langseg.lightning_cli import build_cli
from tests.hf_folders import write_convnext_folder, write_cxr_bert_folder

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
    assert (hp.aux_losses, hp.num_heads, hp.recon_depth, hp.ccl_temperature, hp.seg_weight, hp.dice_weight,
            hp.bce_weight, hp.max_text_length) == ("official", 4, 4, 0.01, 5.0, 0.5, 0.5, 18)
    assert len(model.net.vision_reconstructor.layers) == 4
    texts = ["Bilateral pulmonary infection, two infected areas.", "One infected area in the left lung."]
    image, mask = torch.rand(2, model.in_channels, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    text = model.encode_text(texts)
    losses = model.compute_loss(model.train()(image, text), mask, text)
    losses["loss"].backward()
    assert {"t2v", "v2t", "ccl"} <= set(losses) and torch.isfinite(losses["loss"])
    with torch.no_grad():
        assert model.eval().segment(image, texts)["logits"].shape == (2, 1, 64, 64)
