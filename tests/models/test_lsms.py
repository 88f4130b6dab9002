from pathlib import Path

import pytest
import torch

from langseg.data import SyntheticReferringDataModule
from langseg.lightning_cli import LangsegCLI, build_cli
from langseg.models import LSMS
from langseg.registry import create_model

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), kernel_sizes=(3, 5), ham_channels=16, decoder_channels=16,
             nmf_rank=4)


def _batch(n=4, size=32):
    ds = SyntheticReferringDataModule(num_train=n, image_size=size, num_workers=0)
    ds.setup("fit")
    items = [ds.dataset("train")[i] for i in range(n)]
    return {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
            "text": [i["text"] for i in items]}


def test_registered_as_lsms_with_table_one_defaults():
    assert LSMS is type(create_model("lsms", use_text=False))
    model = LSMS(use_text=False)
    assert [len(stage) for stage in model.net.encoder.stages] == [3, 3, 5, 2]
    assert model.net.encoder.dims == (64, 128, 320, 512)
    assert model.net.decoder.stages == (1, 2, 3)
    assert model.output_stride == model.net.output_stride == model.net.encoder.output_stride


def test_default_recipe_is_adamw_with_polynomial_decay_and_the_small_variant_has_none():
    model = LSMS(use_text=False, **SMALL)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and isinstance(scheduler, torch.optim.lr_scheduler.PolynomialLR)
    assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"]) == (3e-5, 1e-2)
    assert (scheduler.total_iters, scheduler.power) == (100, 0.9)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == trainable
    small = create_model("lsms_small", use_text=False)
    assert type(small) is LSMS and small.net.encoder.dims == (16, 32, 64, 96)
    assert isinstance(small.configure_optimizers(), torch.optim.AdamW)


@pytest.mark.parametrize("size", [32, 64])
def test_logits_at_input_size_and_training_outputs_only_when_training(size):
    model = LSMS(text_encoder="tiny", **SMALL)
    batch = _batch(size=size)
    text = model.encode_text(batch["text"])
    out = model(batch["image"], text)
    assert out["logits"].shape == (4, 1, size, size)
    assert out["pixels"].shape == (4, 16, size // 4, size // 4) and out["text"].shape == (4, 16)
    model.eval()
    assert set(model(batch["image"], text)) == {"logits"}


def test_loss_falls_on_a_tiny_batch_and_has_all_terms():
    torch.manual_seed(0)
    model = LSMS(text_encoder="tiny", optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3), lr_scheduler=None,
                 **SMALL)
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)
    batch = _batch()
    losses = []
    for _ in range(8):
        text = model.encode_text(batch["text"])
        terms = model.compute_loss(model(batch["image"], text), batch["mask"], text)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert {"loss", "focal", "dice", "con"} <= set(terms)
    assert model.hparams.con_weight == 0.125  # alpha of Eq. 15
    torch.testing.assert_close(terms["loss"], terms["focal"] + terms["dice"] + model.hparams.con_weight * terms["con"])
    assert losses[-1] < 0.8 * losses[0]


def test_gradients_reach_the_text_projections_not_the_frozen_encoder():
    model = LSMS(text_encoder="tiny", **SMALL)
    batch = _batch()
    text = model.encode_text(batch["text"])
    model.compute_loss(model(batch["image"], text), batch["mask"], text)["loss"].backward()
    attn = model.net.encoder.stages[2][0].attn
    for proj in (attn.w_l1, attn.w_l2, model.net.text_proj):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.parameters())


def test_image_only_variant_has_no_language_parameters_and_no_text_encoder():
    model = LSMS(use_text=False, **SMALL)
    assert model.text_encoder is None and model.net.text_proj is None
    assert not any(".w_" in name or "text" in name for name, _ in model.named_parameters())
    batch = _batch()
    terms = model.compute_loss(model(batch["image"], None), batch["mask"], None)
    assert "con" not in terms and torch.isfinite(terms["loss"])


def _cli(config: str, *overrides: str) -> LangsegCLI:
    return build_cli(["--config", str(ROOT / config), "--trainer.logger", "false", "--data.init_args.num_workers", "0",
                      *overrides], run=False)


def _hparams(model) -> dict:
    """The model's hyperparameters, sequences as tuples (the CLI gives lists), without the CLI's own entries."""
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in model.hparams.items()
            if not k.startswith("_")}


def test_image_only_variant_from_config_alone():
    cli = _cli("configs/lsms.yaml", "--model.use_text", "false")
    assert isinstance(cli.model, LSMS) and cli.model.text_encoder is None
    assert not any(".w_" in name for name, _ in cli.model.named_parameters())


def test_quick_config_builds_a_text_guided_model_on_synthetic_data():
    cli = _cli("configs/lsms.yaml", "--model.init_args.text_encoder", "tiny")
    assert isinstance(cli.model, LSMS) and cli.model.use_text
    assert isinstance(cli.datamodule, SyntheticReferringDataModule)
    assert _hparams(cli.model) == _hparams(create_model("lsms_small", text_encoder="tiny"))  # lsms_small
    optimizer = cli.model.configure_optimizers()  # lr_scheduler: null
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 4e-3


def test_optimizer_options_on_the_command_line():
    cli = _cli("configs/lsms.yaml", "--model.init_args.text_encoder", "tiny", "--model.optimizer.init_args.lr", "0.01")
    assert cli.model.configure_optimizers().defaults["lr"] == 0.01


def test_paper_config_has_the_paper_recipe():
    cli = _cli("configs/lsms_paper.yaml", "--model.init_args.text_encoder", "tiny")
    cfg = cli.config
    assert cfg.model.init_args.optimizer.class_path == "torch.optim.AdamW"  # the model default, not in the file
    optimizer = cli.model.optimizer([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"]) == (3e-5, 0.01)
    assert (cfg.trainer.max_epochs, cfg.data.init_args.batch_size, cfg.data.init_args.image_size) == (100, 16, 480)
    assert [len(stage) for stage in cli.model.net.encoder.stages] == [3, 3, 5, 2]
    assert cli.model.augmentation is None and not cli.model.text_encoder.frozen  # no augmentation, BERT fine-tuned


def test_paper_config_keeps_the_model_default_polynomial_decay():
    config = _cli("configs/lsms_paper.yaml", "--model.init_args.text_encoder", "tiny").model.configure_optimizers()
    assert isinstance(config, dict), "configure_optimizers() returned no scheduler"
    scheduler = config["lr_scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.PolynomialLR)
    assert (scheduler.total_iters, scheduler.power) == (100, 0.9)


def test_paper_config_matches_table_two_parameters_within_five_percent():
    cli = _cli("configs/lsms_paper.yaml", "--model.init_args.use_text", "false")
    params = sum(p.numel() for p in cli.model.net.parameters()) / 1e6
    assert abs(params / 8.78 - 1) < 0.05 and cli.model.net.decoder.align_stage == 1


def test_literal_eq14_contrastive_form_from_the_model_options():
    torch.manual_seed(0)
    model = LSMS(text_encoder="tiny", con_form="literal", **SMALL)
    batch = _batch()
    text = model.encode_text(batch["text"])
    terms = model.compute_loss(model(batch["image"], text), batch["mask"], text)
    assert -1.0 <= terms["con"].item() <= 0.0  # minus a mean probability, not a log-loss
