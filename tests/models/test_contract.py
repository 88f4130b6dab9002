"""The contract every registered model keeps (as timm's test_models.py): it builds, runs forward and backward
at a small size, in bf16, saves and reloads, and its network runs without Lightning."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

import langseg
from langseg.blocks import TextEncoder
from langseg.lightning_cli import build_cli
from langseg.models import LSMSNet
from langseg.losses import dice_loss
from tests.conftest import synthetic_batch
from tests.tiny_models import TINY, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
MODELS = langseg.list_models()
QUICK_CONFIGS = {"unet_small": "unet.yaml", "lsms_small": "lsms.yaml", "reclmis_small": "reclmis.yaml",
                 "guidedecoder_small": "guidedecoder.yaml", "himix_small": "himix.yaml",
                 "early_fusion_small": "early_fusion_unet.yaml", "mmi_unet_small": "mmi_unet.yaml",
                 "lvit_small": "lvit.yaml"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _build(name: str) -> L.LightningModule:
    torch.manual_seed(0)
    return langseg.create_model(name, **tiny_overrides(name))


def test_every_registered_family_has_a_tiny_build_and_every_variant_a_quick_config():
    assert {n.removesuffix("_small") for n in MODELS} == set(TINY)
    assert {n for n in MODELS if n.endswith("_small")} == set(QUICK_CONFIGS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_and_eval_logits(name):
    model = _build(name)
    batch = synthetic_batch(2, 32)
    model.train()
    loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.net.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.5 * len(grads)
    model.eval()
    with torch.no_grad():
        logits = model.segment(batch["image"], batch["text"])["logits"]
    assert logits.shape == (2, 1, 32, 32) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_step_is_finite(name):
    model = _build(name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step(synthetic_batch(2, 32), 0)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", MODELS)
def test_saves_and_reloads_to_the_same_outputs(name, tmp_path):
    model = _build(name)
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, langseg.data.SyntheticReferringDataModule(num_train=4, num_val=2, image_size=32,
                                                                  batch_size=2, num_workers=0))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = type(model).load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu")
    batch = synthetic_batch(2, 32)
    with torch.no_grad():
        expected = model.eval().segment(batch["image"], batch["text"])["logits"]
        assert torch.allclose(loaded.eval().segment(batch["image"], batch["text"])["logits"], expected, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_network_runs_without_lightning(name):
    model = _build(name)
    net = model.net
    assert not isinstance(net, L.LightningModule)
    assert all(not n.startswith("text_encoder") for n, _ in net.named_parameters())
    batch = synthetic_batch(2, 32)
    text = model.text_encoder(batch["text"]) if model.text_encoder is not None else None
    out = net.eval()(batch["image"], text)
    assert out["logits"].shape == (2, 1, 32, 32)
    assert 32 % net.output_stride == 0 and model.output_stride == net.output_stride


def test_a_network_trains_in_a_plain_pytorch_loop():
    torch.manual_seed(0)
    text_encoder = TextEncoder("tiny")  # frozen: features cached per distinct text
    net = LSMSNet(in_channels=1, text_dim=text_encoder.hidden_size, dims=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                  kernel_sizes=(3, 5), ham_channels=16, decoder_channels=16, nmf_rank=4, contrastive=False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    batch = synthetic_batch(4, 32)
    losses = []
    for _ in range(25):
        logits = net(batch["image"], text_encoder(batch["text"]))["logits"]
        loss = dice_loss(logits, batch["mask"]) + nn.functional.binary_cross_entropy_with_logits(logits, batch["mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def _optimizer_summary(model: L.LightningModule) -> tuple:
    config = model.configure_optimizers()
    optimizer = config["optimizer"] if isinstance(config, dict) else config
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    scheduler = config.get("lr_scheduler") if isinstance(config, dict) else None
    settings = None if scheduler is None else {k: v for k, v in scheduler.state_dict().items() if not k.startswith("_")}
    return type(optimizer), group, type(scheduler), settings


def _hyperparameters(model: L.LightningModule) -> dict:
    """Hyper-parameters as the config gives them (lists, not tuples), without the CLI's bookkeeping keys."""
    return json.loads(json.dumps({k: v for k, v in model.hparams.items() if not k.startswith("_")}))


@pytest.mark.parametrize("name", sorted(QUICK_CONFIGS))
def test_small_variant_is_what_the_quick_config_trains(name):
    cli = build_cli(["--config", str(REPO / "configs" / QUICK_CONFIGS[name])], run=False)
    variant = langseg.create_model(name)
    assert type(variant) is type(cli.model)
    assert _hyperparameters(variant) == _hyperparameters(cli.model)
    assert _optimizer_summary(variant) == _optimizer_summary(cli.model)
    assert type(variant.augmentation) is type(cli.model.augmentation)
    assert sum(p.numel() for p in variant.net.parameters()) == sum(p.numel() for p in cli.model.net.parameters())


@pytest.mark.parametrize("config", ["lsms_paper.yaml", "reclmis_paper.yaml", "guidedecoder_paper.yaml",
                                    "himix_paper.yaml", "early_fusion_unet_paper.yaml", "mmi_unet_paper.yaml",
                                    "lvit_paper.yaml"])
def test_paper_config_trains_with_the_method_default_schedule(config):
    tiny = ["--model.text_encoder", "tiny"] + (["--model.text_layers", "[2, 3, 4]"] if "himix" in config else [])
    cli = build_cli(["--config", str(REPO / "configs" / config), *tiny], run=False)
    expected = cli.model.default_lr_scheduler()
    scheduler = cli.model.configure_optimizers()["lr_scheduler"]
    assert type(scheduler) is expected.func
    assert all(getattr(scheduler, k) == v for k, v in expected.keywords.items())
