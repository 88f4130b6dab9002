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
