from pathlib import Path

import pytest
import torch

from langseg.errors import ConfigError
from langseg.lightning_cli import build_cli
from langseg.models import GuideDecoder, GuideDecoderNet, HiMix, HiMixNet
from langseg.registry import create_model
from tests.conftest import synthetic_batch as _batch

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
    a = model(image, text)["logits"]
    b = model(image, text.index_select(torch.tensor([1, 0])))["logits"]
    assert not torch.allclose(a, b)


def test_a_resnet_backbone_swaps_in():
    model = GuideDecoder(text_encoder="tiny", encoder_name="resnet18", max_text_length=16, text_tokens=(16, 8, 4))
    assert model.net.encoder.feature_info.channels() == [64, 128, 256, 512]
    assert model.output_stride == model.net.encoder.feature_info.reduction()[-1]
    assert model.segment(torch.rand(1, 1, 64, 64), TEXTS[:1])["logits"].shape == (1, 1, 64, 64)


def test_loss_falls_and_gradients_reach_encoder_and_guides_not_the_text_encoder():
    model = tiny_guidedecoder()
    losses = loss_falls(model)
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.net.guides[0].scale.grad is not None
    assert next(model.net.encoder.parameters()).grad.abs().sum() > 0


def test_registered_and_reports_a_bad_backbone():
    assert isinstance(create_model("guidedecoder", text_encoder="tiny", encoder_name="convnext_atto",
                                   max_text_length=24), GuideDecoder)
    with pytest.raises(ConfigError, match="no_such_net"):
        GuideDecoder(text_encoder="tiny", encoder_name="no_such_net")


def test_default_recipe_is_adamw_with_cosine_annealing_and_the_small_variant_decays_over_its_4_epochs():
    config = tiny_guidedecoder().configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 3e-4
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert (scheduler.T_max, scheduler.eta_min) == (200, 1e-6)
    small = create_model("guidedecoder_small", text_encoder="tiny")
    assert type(small) is GuideDecoder and small.hparams.encoder_name == "convnext_atto"
    assert small.hparams.cross_heads == 8 and small.net.guides[0].cross_attn.attn.num_heads == 8
    config = small.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.AdamW) and config["optimizer"].defaults["lr"] == 1e-3
    assert isinstance(config["lr_scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    assert config["lr_scheduler"].T_max == 4


@pytest.mark.parametrize("name", ["guidedecoder", "guidedecoder_paper", "himix", "himix_paper"])
def test_configs_parse_and_build(name):
    overrides = ["--model.init_args.text_encoder=tiny", "--model.init_args.encoder_name=convnext_atto",
                 "--trainer.logger=false"]
    if name.startswith("himix"):
        overrides.append("--model.init_args.text_layers=[2,3,4]")
    cli = build_cli(["--config", str(ROOT / "configs" / f"{name}.yaml"), *overrides], run=False)
    model_class, net_class = (HiMix, HiMixNet) if name.startswith("himix") else (GuideDecoder, GuideDecoderNet)
    assert type(cli.model) is model_class and type(cli.model.net) is net_class
    assert isinstance(cli.model.net, GuideDecoderNet) and cli.model.hparams.max_text_length == 24
    if name.endswith("_paper"):  # the model's default optimiser
        optimizer = cli.model.optimizer([torch.nn.Parameter(torch.zeros(1))])
        assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 3e-4
    else:  # the quick configs: the small variant's optimiser; GuideDecoder's decays over its 4 epochs, HiMix's not
        config = cli.model.configure_optimizers()
        optimizer = config["optimizer"] if name == "guidedecoder" else config
        assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 1e-3
        if name == "guidedecoder":
            assert config["lr_scheduler"].T_max == cli.trainer.max_epochs == 4
