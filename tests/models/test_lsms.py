from pathlib import Path

import pytest
import torch

from langseg.cli import LangsegCLI
from langseg.data import SegmentationDataModule, SyntheticReferringDataModule
from langseg.models import LSMS
from langseg.models.base import LanguageGuidedSegmenter
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
    assert [len(stage) for stage in model.encoder.stages] == [3, 3, 5, 2]
    assert model.encoder.dims == (64, 128, 320, 512)
    assert model.decoder.stages == (1, 2, 3)


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
    model = LSMS(text_encoder="tiny", lr=3e-3, **SMALL)
    opt = model.configure_optimizers()
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
    torch.testing.assert_close(terms["loss"], terms["focal"] + terms["dice"] + 0.125 * terms["con"])
    assert losses[-1] < 0.8 * losses[0]


def test_gradients_reach_the_text_projections_not_the_frozen_encoder():
    model = LSMS(text_encoder="tiny", **SMALL)
    batch = _batch()
    text = model.encode_text(batch["text"])
    model.compute_loss(model(batch["image"], text), batch["mask"], text)["loss"].backward()
    for proj in (model.encoder.stages[2][0].attn.w_l1, model.encoder.stages[2][0].attn.w_l2, model.text_proj):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.parameters())


def test_image_only_variant_has_no_language_parameters_and_no_text_encoder():
    model = LSMS(use_text=False, **SMALL)
    assert model.text_encoder is None and model.text_proj is None
    assert not any(".w_" in name or "text" in name for name, _ in model.named_parameters())
    batch = _batch()
    terms = model.compute_loss(model(batch["image"], None), batch["mask"], None)
    assert "con" not in terms and torch.isfinite(terms["loss"])


def _cli(config: str, *overrides: str) -> LangsegCLI:
    return LangsegCLI(LanguageGuidedSegmenter, SegmentationDataModule, run=False, subclass_mode_model=True,
                      subclass_mode_data=True, args=["--config", str(ROOT / config), "--trainer.logger", "false",
                                                     "--data.init_args.num_workers", "0", *overrides])


def test_image_only_variant_from_config_alone():
    cli = _cli("configs/lsms.yaml", "--model.init_args.use_text", "false")
    assert isinstance(cli.model, LSMS) and cli.model.text_encoder is None
    assert not any(".w_" in name for name, _ in cli.model.named_parameters())


def test_quick_config_builds_a_text_guided_model_on_synthetic_data():
    cli = _cli("configs/lsms.yaml", "--model.init_args.text_encoder", "tiny")
    assert isinstance(cli.model, LSMS) and cli.model.use_text
    assert isinstance(cli.datamodule, SyntheticReferringDataModule)


def test_paper_config_has_the_paper_recipe():
    cli = _cli("configs/lsms_paper.yaml", "--model.init_args.text_encoder", "tiny")
    cfg = cli.config
    assert cfg.optimizer.class_path == "torch.optim.AdamW"
    assert (cfg.optimizer.init_args.lr, cfg.optimizer.init_args.weight_decay) == (3e-5, 0.01)
    assert cfg.lr_scheduler.class_path == "torch.optim.lr_scheduler.PolynomialLR"
    assert (cfg.lr_scheduler.init_args.total_iters, cfg.lr_scheduler.init_args.power) == (100, 0.9)
    assert (cfg.trainer.max_epochs, cfg.data.init_args.batch_size, cfg.data.init_args.image_size) == (100, 16, 480)
    assert [len(stage) for stage in cli.model.encoder.stages] == [3, 3, 5, 2]
