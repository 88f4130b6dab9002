from pathlib import Path

import pytest
import torch

from langseg.cli import LangsegCLI
from langseg.data.datamodules import SegmentationDataModule
from langseg.models import GuideDecoder, LanguageGuidedSegmenter
from langseg.registry import create_model
from tests.models.test_base import _batch

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["one lesion in the left lung", "two lesions in the right upper zone"]


def loss_falls(model, steps=10):
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch = _batch()
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
def test_configs_parse_and_build(name):
    overrides = ["--model.init_args.text_encoder=tiny", "--model.init_args.encoder_name=convnext_atto"]
    if name.startswith("himix"):
        overrides.append("--model.init_args.text_layers=[2,3,4]")
    cli = LangsegCLI(LanguageGuidedSegmenter, SegmentationDataModule, subclass_mode_model=True,
                     subclass_mode_data=True, run=False, args=["--config", str(ROOT / "configs" / f"{name}.yaml"),
                                                               *overrides])
    assert isinstance(cli.model, GuideDecoder) and cli.model.hparams.max_text_length == 24
