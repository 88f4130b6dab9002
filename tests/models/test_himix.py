from dataclasses import replace

import pytest
import torch

from langseg.errors import ConfigError
from langseg.models import GuideDecoderNet, HiMix, HiMixNet
from langseg.registry import create_model
from tests.models.test_guidedecoder import TEXTS, loss_falls


def tiny_himix(**kwargs):
    torch.manual_seed(0)
    return HiMix(text_encoder="tiny", encoder_name="convnext_atto", max_text_length=16, text_tokens=(16, 8, 4),
                 text_layers=(2, 3, 4), **kwargs)


@pytest.mark.parametrize("size", [32, 64])
def test_logits_match_the_image_size(size):
    model = tiny_himix().eval()
    assert model.segment(torch.rand(2, 1, size, size), TEXTS)["logits"].shape == (2, 1, size, size)


def test_is_a_guidedecoder_reading_every_hidden_state():
    model = tiny_himix()
    assert isinstance(model.net, HiMixNet) and isinstance(model.net, GuideDecoderNet)
    assert isinstance(create_model("himix", text_encoder="tiny", text_layers=[1, 2, 3], encoder_name="convnext_atto"),
                      HiMix)
    assert isinstance(create_model("himix_small", text_encoder="tiny", text_layers=[1, 2, 3]).net, HiMixNet)
    text = model.encode_text(TEXTS)
    assert text.hidden_states is not None and len(text.hidden_states) == model.text_encoder.num_layers + 1
    assert model.text_encoder.num_layers == 4  # the tiny BERT: embeddings + 4 layers


def test_needs_every_hidden_state():
    model = tiny_himix().eval()
    text = replace(model.encode_text(TEXTS), hidden_states=None)
    with pytest.raises(ConfigError, match="every hidden state"):
        model.net(torch.rand(2, 1, 32, 32), text)


def test_rejects_an_encoder_depth_it_cannot_split():
    with pytest.raises(ConfigError, match="4 layers cannot be split"):
        HiMix(text_encoder="tiny", encoder_name="convnext_atto")  # tiny BERT has 4 layers


def test_loss_falls_and_the_refinement_width_learns():
    model = tiny_himix()
    losses = loss_falls(model)
    assert losses[-1] < 0.8 * losses[0]
    assert model.net.guides[-1].refine.sigma.grad.abs() > 0  # the 1x1 coarse map of a 32-px image has no width to learn
    assert all(p.grad is None for p in model.text_encoder.parameters())
