from pathlib import Path

import pytest
import torch

from langseg.blocks import TextFeatures
from langseg.errors import ConfigError
from langseg.lightning_cli import build_cli
from langseg.models import LViT, LViTNet
from langseg.profiling import count_parameters
from langseg.registry import create_model
from tests.conftest import synthetic_batch

REPO = Path(__file__).resolve().parents[2]
WIDTHS = (4, 8, 16, 32, 32)
ARCHITECTURE = ("widths", "num_heads", "mlp_ratio", "image_size", "max_text_length", "dropout", "text_every_scale")
PAPER_PARAMS_M = 29.7  # LViT-T, RecLMIS and LSMS tables

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**kwargs):
    torch.manual_seed(0)
    return LViT(text_encoder="tiny", widths=WIDTHS, num_heads=2, image_size=32, **kwargs)


def test_registered_and_logits_at_the_built_and_another_size():
    assert isinstance(create_model("lvit", text_encoder="tiny", widths=WIDTHS, num_heads=2, image_size=32), LViT)
    model = _model().eval()
    for size in (32, 64):  # 64: the learned 2x2 token grid is resampled to 4x4
        batch = synthetic_batch(2, size)
        assert model.segment(batch["image"], batch["text"])["logits"].shape == (2, 1, size, size)


@pytest.mark.parametrize("every_scale", [False, True])
def test_the_mask_depends_on_the_text_and_the_text_path_gets_gradients(every_scale):
    model = _model(text_every_scale=every_scale)
    assert len(model.net.text_to_patches) == (4 if every_scale else 1)
    batch = synthetic_batch(2, 32, texts=["One infected area in the upper left lung."] * 2)
    model.eval()
    with torch.no_grad():
        left = model.segment(batch["image"], batch["text"])["logits"]
        right = model.segment(batch["image"], ["All lesions: bilateral pulmonary infection, three infected areas."] * 2)
    assert not torch.allclose(left, right["logits"])
    model.train()
    model.training_step(batch, 0).backward()
    for module in (*model.net.text_chain, *model.net.text_to_patches, model.net.embeddings[0]):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_a_text_of_another_token_count_is_refused():
    model = _model()
    words = torch.randn(1, 20, model.text_dim)
    text = TextFeatures(words, torch.ones(1, 20, dtype=torch.bool), words.mean(1))
    with pytest.raises(ConfigError, match="built for 12 text tokens but got 20"):
        model.net(torch.randn(1, 1, 32, 32), text)


def test_widths_that_do_not_grow_are_refused():
    with pytest.raises(ConfigError, match="increasing widths"):
        LViTNet(1, 32, widths=(8, 8, 16, 32, 32), num_heads=2, image_size=32)


def test_loss_is_lvits_dice_bce_and_falls():
    model = _model()
    batch = synthetic_batch(4, 32)
    text = model.encode_text(batch["text"])
    terms = model.compute_loss(model(batch["image"], text), batch["mask"], text)
    assert torch.isclose(terms["loss"], 0.5 * terms["dice"] + 0.5 * terms["bce"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_paper_preset_has_the_published_parameter_count():
    """configs/lvit_paper.yaml's network at LViT's BERT width (768) and at the packaged MiniLM's (384), built
    without a forward pass; the text encoder itself is not counted (LViT's is a frozen, separate BERT)."""
    cli = build_cli(["--config", str(REPO / "configs" / "lvit_paper.yaml"), "--model.text_encoder", "tiny"], run=False)
    hp = cli.model.hparams
    assert cli.model.in_channels == 3 and hp.image_size == 224
    for text_dim in (768, 384):
        net = LViTNet(3, text_dim, **{k: hp[k] for k in ARCHITECTURE})
        assert abs(count_parameters(net) / 1e6 / PAPER_PARAMS_M - 1) < 0.05, (text_dim, count_parameters(net))
