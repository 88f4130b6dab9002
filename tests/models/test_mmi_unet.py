from dataclasses import replace

import pytest
import torch

from langseg.blocks.augmentation import JointAugmentation
from langseg.errors import ConfigError
from langseg.models import MMIUNet, MMIUNetNet
from langseg.registry import create_model
from tests.models.test_guidedecoder import TEXTS, loss_falls

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_mmi_unet(**kwargs):
    torch.manual_seed(0)
    return MMIUNet(text_encoder="tiny", encoder_name="convnext_atto", max_text_length=16, **kwargs)


def _count(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


# Parameter counts of the official architecture (nguyenpbui/MMI-UNet: MMIUNet_V2 in utils/model.py, Bridger,
# Interactor, Decoder, Block in utils/layers.py; MONAI SubpixelUpsample + UnetOutBlock), written out from its
# layer definitions. The unused final LayerNorm, classifier and text projection head are left out, as in the
# issue's independent count: 54.99 M trainable (27.82 + 21.80 + 5.03 + 0.33), frozen BERT excluded.
def official_convnext_t(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3)) -> int:
    stem = 3 * dims[0] * 16 + dims[0] + 2 * dims[0]  # 4x4 conv + channels-first LayerNorm
    block = [49 * d + d + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + d for d in dims]  # dw, LN, MLP, gamma
    down = [2 * dims[i] + dims[i] * dims[i + 1] * 4 + dims[i + 1] for i in range(3)]  # LN + 2x2 conv
    return stem + sum(n * b for n, b in zip(depths, block)) + sum(down)


def official_interactor(c: int, ffn: int = 128) -> int:
    attention = 3 * c * c + 3 * c + c * c + c  # in-projection + out-projection
    return 2 * attention + (c * ffn + ffn) + (ffn * c + c) + 3 * 2 * c


def official_bridger(c: int, text: int = 768) -> int:
    zoom = 2 * c * c * 4  # 2x2 conv in, 2x2 transposed conv out, no bias
    return zoom + (text * c + c) + (c * text + text) + 2 * 2 * c + 2 * official_interactor(c)


def official_decoder_block(cin: int, cout: int) -> int:
    return cin * cout * 4 + cout + 2 * cout * cout * 9 + cout + 2 * cout


def test_paper_preset_has_the_official_parameter_count():
    net = MMIUNetNet(in_channels=1, text_dim=768)  # ConvNeXt-T, CXR-BERT's width
    dims = (96, 192, 384, 768)
    assert _count(net.encoder) == official_convnext_t()
    assert _count(net.bridgers) == sum(official_bridger(c) for c in dims)
    assert _count(net.decoder) == sum(official_decoder_block(dims[i + 1], dims[i]) for i in range(3))
    assert _count(net.head) == 96 * 24 * 16 * 9 + 24 * 16 + 24 + 1  # 3x3 conv to 16*24, 1x1 conv to 1
    assert _count(net) == pytest.approx(54.99e6, abs=0.005e6)


def test_dropping_the_unused_last_text_branch_removes_exactly_it():
    kept, dropped = MMIUNetNet(text_dim=32, encoder_name="convnext_atto"), \
        MMIUNetNet(text_dim=32, encoder_name="convnext_atto", last_bridger_text=False)
    last = kept.bridgers[-1]
    assert _count(kept) - _count(dropped) == _count(last.text_interactor, last.text_out)
    assert dropped.bridgers[-1].text_out is None and dropped.bridgers[0].text_out is not None


@pytest.mark.parametrize("last_bridger_text", [True, False])
def test_only_the_last_text_branch_gets_no_gradient(last_bridger_text):
    model = tiny_mmi_unet(last_bridger_text=last_bridger_text)
    logits = model(torch.rand(2, 1, 32, 32), model.encode_text(TEXTS))["logits"]
    logits.square().mean().backward()
    idle = {n.split(".")[2] for n, p in model.net.named_parameters() if p.grad is None}
    assert idle == ({"text_interactor", "text_out"} if last_bridger_text else set())


@pytest.mark.parametrize("size", [32, 64])
def test_logits_match_the_image_size(size):
    model = tiny_mmi_unet().eval()
    assert model.segment(torch.rand(2, 1, size, size), TEXTS)["logits"].shape == (2, 1, size, size)


def test_bridger_outputs_feed_the_next_stage_the_skips_and_the_next_bridger_text():
    model = tiny_mmi_unet().eval()
    net, text = model.net, model.encode_text(TEXTS)
    seen = {}
    net.bridgers[0].register_forward_hook(lambda m, args, out: seen.update(b0_in=args[0], b0=out))
    net.bridgers[1].register_forward_hook(lambda m, args, out: seen.update(b1_text=args[1]))
    net.encoder["stages_1"].register_forward_hook(lambda m, args, out: seen.update(s1_in=args[0]))
    net.decoder[2].register_forward_hook(lambda m, args, out: seen.update(finest_skip=args[1]))
    with torch.no_grad():
        net(torch.rand(2, 1, 32, 32), text)
    vis, words = seen["b0"]
    torch.testing.assert_close(seen["s1_in"], seen["b0_in"] + vis)  # stage output + Bridger output
    torch.testing.assert_close(seen["finest_skip"], vis)
    torch.testing.assert_close(seen["b1_text"], text.tokens + words)  # embedding + previous Bridger's text


def test_text_changes_the_prediction_and_padding_masks_only_when_asked():
    image = torch.rand(2, 1, 32, 32)
    for mask_padding in (False, True):
        model = tiny_mmi_unet(mask_padding=mask_padding).eval()
        text = model.encode_text(TEXTS)
        assert text.tokens.shape[1] == 16  # padded to max_text_length
        a = model(image, text)["logits"]
        assert not torch.allclose(a, model(image, text.index_select(torch.tensor([1, 0])))["logits"])
        pad = (~text.mask).unsqueeze(-1)
        noisy = replace(text, tokens=text.tokens + 3 * torch.randn_like(text.tokens) * pad)
        assert torch.allclose(a, model(image, noisy)["logits"], atol=1e-5) == mask_padding


def test_loss_falls_and_gradients_reach_encoder_and_bridgers_not_the_text_encoder():
    model = tiny_mmi_unet(dropout=0.0)
    losses = loss_falls(model)
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.net.bridgers[0].text_in.weight.grad.abs().sum() > 0
    assert next(model.net.encoder.parameters()).grad.abs().sum() > 0


def test_registered_recipe_and_a_backbone_without_stages_is_refused():
    assert isinstance(create_model("mmi_unet_small", text_encoder="tiny").net, MMIUNetNet)
    model = tiny_mmi_unet()
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.AdamW) and config["optimizer"].defaults["lr"] == 3e-4
    assert isinstance(config["lr_scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    assert config["lr_scheduler"].T_max == 200 and config["lr_scheduler"].eta_min == 1e-6
    assert isinstance(model.augmentation, JointAugmentation)
    assert tiny_mmi_unet(augmentation=False).augmentation is None
    with pytest.raises(ConfigError, match="vit_tiny_patch16_224"):
        MMIUNetNet(text_dim=32, encoder_name="vit_tiny_patch16_224")
