import subprocess
import sys
from pathlib import Path

import pytest
import torch

from langseg.data import SyntheticReferringDataModule
from langseg.models import GuideDecoder
from langseg.registry import create_model

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["one lesion in the left lung", "two lesions in the right upper zone"]


def tiny_batch(n=4, size=32):
    dm = SyntheticReferringDataModule(num_train=n, image_size=size, num_workers=0)
    dm.setup("fit")
    items = [dm.dataset("train")[i] for i in range(n)]
    return {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
            "text": [i["text"] for i in items]}


def loss_falls(model, steps=15):
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch = tiny_batch()
    losses = []
    for _ in range(steps):
        loss = model.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def tiny_guidedecoder(**kwargs):
    torch.manual_seed(0)
    return GuideDecoder(text_encoder="tiny", encoder_name="convnext_atto", max_text_length=16,
                        text_tokens=(16, 8, 4), **kwargs)


@pytest.mark.parametrize("size", [32, 64])
def test_logits_match_the_image_size(size):
    model = tiny_guidedecoder().eval()
    out = model.segment(torch.rand(2, 1, size, size), TEXTS)["logits"]
    assert out.shape == (2, 1, size, size)


def test_text_changes_the_prediction_and_padding_is_fixed():
    model = tiny_guidedecoder().eval()
    text = model.encode_text(TEXTS)
    assert text.tokens.shape[1] == 16
    image = torch.rand(2, 1, 32, 32)
    a = model(image, text)
    b = model(image, text.index_select(torch.tensor([1, 0])))
    assert not torch.allclose(a, b)


def test_a_resnet_backbone_swaps_in():
    model = GuideDecoder(text_encoder="tiny", encoder_name="resnet18", max_text_length=16, text_tokens=(16, 8, 4))
    assert model.encoder.feature_info.channels() == [64, 128, 256, 512]
    assert model.segment(torch.rand(1, 1, 64, 64), TEXTS[:1])["logits"].shape == (1, 1, 64, 64)


def test_loss_falls_and_gradients_reach_encoder_and_guides_not_the_text_encoder():
    model = tiny_guidedecoder()
    losses = loss_falls(model)
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.guides[0].scale.grad is not None
    assert next(model.encoder.parameters()).grad.abs().sum() > 0


def test_registered_and_reports_a_bad_backbone():
    assert isinstance(create_model("guidedecoder", text_encoder="tiny", encoder_name="convnext_atto",
                                   max_text_length=24), GuideDecoder)
    with pytest.raises(Exception, match="no_such_net"):
        GuideDecoder(text_encoder="tiny", encoder_name="no_such_net")


@pytest.mark.parametrize("name", ["guidedecoder", "guidedecoder_paper", "himix", "himix_paper"])
def test_configs_parse(name):
    res = subprocess.run([sys.executable, "-m", "langseg", "fit", "--config", f"configs/{name}.yaml", "--print_config"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "class_path: langseg.models." in res.stdout
