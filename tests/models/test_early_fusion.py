from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch

from torch import nn

from langseg.blocks.augmentation import JointAugmentation
from langseg.cli import main
from langseg.data import SyntheticReferringDataModule
from langseg.errors import ConfigError
from langseg.lightning_cli import build_cli
from langseg.losses import roi_l1_loss
from langseg.models import EarlyFusionSegmenter
from langseg.registry import create_model

ROOT = Path(__file__).resolve().parents[2]
ARCHS = ["Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "DeepLabV3", "MAnet", "Linknet", "PSPNet", "UPerNet"]
SMALL_UNET = (32, 16, 8, 8, 8)


def _batch(n=4, size=32):
    dm = SyntheticReferringDataModule(num_train=n, image_size=size, num_workers=0)
    items = [dm.dataset("train")[i] for i in range(n)]
    return {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
            "text": [i["text"] for i in items]}


def _model(**kwargs):
    kwargs = {"text_encoder": "tiny", "decoder_channels": SMALL_UNET, **kwargs}
    return EarlyFusionSegmenter(**kwargs)


def _square(n=1, size=32):
    x = torch.zeros(n, 1, size, size)
    x[..., 4:12, 2:10] = 1.0  # off-centre, so flips and rotations move it
    return x


def test_registered_and_doubles_the_input_channels():
    model = create_model("early_fusion", text_encoder="tiny", in_channels=3, decoder_channels=SMALL_UNET)
    assert isinstance(model, EarlyFusionSegmenter)
    assert model.net.smp.model.encoder._in_channels == 6
    assert model.net.generator.upsample[-2].out_channels == 3
    assert model.output_stride == model.net.smp.model.encoder.output_stride


def test_default_augmentation_is_the_joint_one_and_can_be_switched_off():
    assert isinstance(_model().augmentation, JointAugmentation)
    assert isinstance(create_model("early_fusion_small", text_encoder="tiny").augmentation, JointAugmentation)
    assert _model(augmentation=False).augmentation is None


def test_horizontal_flip_moves_image_pseudo_image_and_mask_identically():
    augment = JointAugmentation(hflip_prob=1.0, affine_prob=0.0)
    square = _square()
    image, mask, pseudo = augment(square, square.clone(), square.clone())
    expected = square.flip(-1)
    assert torch.equal(image, expected) and torch.equal(pseudo, expected) and torch.equal(mask, expected)


def test_known_rotation_moves_image_pseudo_image_and_mask_identically():
    augment = JointAugmentation(hflip_prob=0.0, affine_prob=1.0, rotation_degrees=(90.0, 90.0), translate=0.0,
                                scale=(1.0, 1.0))
    square = _square()
    image, mask, pseudo = augment(square, square.clone(), square.clone())
    expected = torch.rot90(square, -1, (-2, -1))  # kornia's +90 degrees
    for out in (image, pseudo, mask):
        assert torch.allclose(out, expected, atol=1e-4)


def test_random_transforms_differ_per_sample_but_are_shared_by_the_three_tensors():
    torch.manual_seed(0)
    augment = JointAugmentation(hflip_prob=0.5, affine_prob=1.0, rotation_degrees=40.0)
    square = _square(n=6)
    image, mask, pseudo = augment(square, square.clone(), square.clone())
    assert torch.allclose(image, pseudo)
    agree = ((image > 0.5).float() == mask).float().mean(dim=(1, 2, 3))
    assert (agree > 0.97).all()
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 1
    assert not torch.equal(mask, square)


class CountingAugmentation(nn.Module):
    """Wraps an augmentation and records the tensors of each call and what it returned."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.results = inner, [], []

    def forward(self, *tensors):
        self.calls.append(tensors)
        self.results.append(self.inner(*tensors))
        return self.results[-1]


def _capture_loss(model):
    seen = {}

    def capture(outputs, mask, text):
        seen.update(outputs=outputs, mask=mask, text=text)
        return EarlyFusionSegmenter.compute_loss(model, outputs, mask, text)

    model.compute_loss = capture
    return seen


def test_training_step_scores_the_augmented_mask_and_augments_the_generated_pseudo_image():
    model = _model(augmentation=JointAugmentation(hflip_prob=1.0, affine_prob=0.0))
    batch = _batch()
    seen = _capture_loss(model)
    model.training_step(batch, 0)
    assert torch.equal(seen["mask"], batch["mask"].flip(-1))
    assert torch.equal(seen["outputs"]["image"], batch["image"].flip(-1))
    pseudo = model.net.pseudo_image(seen["text"], batch["image"].shape[-2:])
    assert torch.allclose(seen["outputs"]["pseudo_image"], pseudo.flip(-1))
    roi = roi_l1_loss(pseudo.flip(-1), batch["image"].flip(-1), batch["mask"].flip(-1))
    assert torch.allclose(model.compute_loss(seen["outputs"], seen["mask"], seen["text"])["roi_l1"], roi)


def test_transform_train_batch_augments_image_pseudo_image_and_mask_with_one_draw():
    torch.manual_seed(0)
    augment = CountingAugmentation(JointAugmentation(hflip_prob=0.5, affine_prob=1.0, rotation_degrees=40.0))
    model = _model(augmentation=augment)
    batch = _batch(n=6)
    batch["image"] = batch["mask"].clone()  # image, mask and pseudo-image alike: one draw keeps them alike
    model.net.pseudo_image = lambda text, size: batch["mask"].clone()
    text = model.encode_text(batch["text"])
    out = model.transform_train_batch(batch, text)
    assert len(augment.calls) == 1 and len(augment.calls[0]) == 3  # image, mask and pseudo-image together
    assert set(out) == set(batch) | {"pseudo_image"} and model.net_inputs == ("pseudo_image",)
    assert torch.allclose(out["image"], out["pseudo_image"])
    agree = ((out["image"] > 0.5).float() == out["mask"]).float().mean(dim=(1, 2, 3))
    assert (agree > 0.97).all()
    assert not torch.equal(out["mask"], batch["mask"])
    seen = _capture_loss(model)
    forwarded = []
    original = model.forward
    model.forward = lambda image, text, **inputs: forwarded.append((image, inputs)) or original(image, text, **inputs)
    model.training_step(batch, 0)  # the base step feeds the augmented tensors to the network and scores the mask
    assert len(augment.calls) == 2
    image, mask, pseudo = augment.results[1]
    ((fed_image, fed_inputs),) = forwarded
    assert fed_image is image and fed_inputs.keys() == {"pseudo_image"} and fed_inputs["pseudo_image"] is pseudo
    assert seen["mask"] is mask and not torch.equal(mask, batch["mask"])


def test_without_augmentation_the_step_still_generates_the_pseudo_image():
    model = _model(augmentation=False)
    batch = _batch()
    text = model.encode_text(batch["text"])
    out = model.transform_train_batch(batch, text)
    assert out["image"] is batch["image"] and out["mask"] is batch["mask"]
    assert torch.equal(out["pseudo_image"], model.net.pseudo_image(text, batch["image"].shape[-2:]))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_smp_arch_builds_and_trains_a_step(arch):
    torch.manual_seed(0)
    model = _model(arch=arch)
    loss = model.training_step(_batch(n=2, size=32), 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.net.generator.project.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.net.smp.model.encoder.conv1.parameters())


def test_without_text_it_is_the_plain_smp_model():
    model = _model(use_text=False, arch="FPN")
    assert model.text_encoder is None and model.net.generator is None
    assert not any("generator" in name for name, _ in model.named_parameters())
    plain = smp.create_model("FPN", encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=1)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    plain.load_state_dict(model.net.smp.model.state_dict())
    model.eval(), plain.eval()
    image = _batch()["image"]
    assert torch.equal(model.segment(image, None)["logits"], plain(image))


def test_without_text_a_training_step_runs():
    model = _model(use_text=False, arch="FPN")
    assert torch.isfinite(model.training_step(_batch(), 0))


@pytest.mark.parametrize("size", [32, 64])
def test_pseudo_image_has_the_input_size(size):
    model = _model().eval()
    batch = _batch(n=2, size=size)
    out = model.segment(batch["image"], batch["text"])
    assert out["pseudo_image"].shape == (2, 1, size, size) and out["logits"].shape == (2, 1, size, size)


def test_the_text_changes_the_pseudo_image_and_the_prediction():
    model = _model().eval()
    image = _batch(n=1)["image"].expand(2, -1, -1, -1)
    texts = ["One infected area in the upper left lung.", "All lesions: bilateral pulmonary infection."]
    out = model.segment(image, texts)
    assert not torch.allclose(out["pseudo_image"][0], out["pseudo_image"][1])
    assert not torch.allclose(out["logits"][0], out["logits"][1])


def test_roi_term_is_in_the_loss_and_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    model = _model(augmentation=False, optimizer=lambda params: torch.optim.AdamW(params, lr=0.02), lr_scheduler=None,
                   roi_weight=0.1)
    opt = model.configure_optimizers()
    hp = model.hparams
    assert isinstance(opt, torch.optim.AdamW) and hp.bce_weight == 0.0
    batch = _batch()
    losses, rois = [], []
    for _ in range(12):
        out = model.segment(batch["image"], batch["text"])
        terms = model.compute_loss(out, batch["mask"], None)
        expected = hp.dice_weight * terms["dice"] + hp.bce_weight * terms["bce"] + hp.roi_weight * terms["roi_l1"]
        assert torch.allclose(terms["loss"], expected)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
        rois.append(terms["roi_l1"].item())
    assert losses[-1] < 0.7 * losses[0] and rois[-1] < rois[0]


def test_roi_l1_loss_targets_the_image_inside_the_mask():
    image, mask = torch.rand(2, 3, 16, 16), _square(n=2, size=16)
    assert roi_l1_loss(image * mask, image, mask) == 0
    assert torch.isclose(roi_l1_loss(image, image, mask), (image * (1 - mask)).mean())


@pytest.mark.parametrize("name", ["early_fusion_unet", "early_fusion_fpn", "early_fusion_unet_paper"])
def test_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "configs" / f"{name}.yaml"), "--print_config"])
    assert done.value.code in (0, None)
    assert "langseg.models.EarlyFusionSegmenter" in capsys.readouterr().out


def _cli(name, *overrides):
    return build_cli(["--config", str(ROOT / "configs" / f"{name}.yaml"), "--model.init_args.text_encoder", "tiny",
                      "--trainer.logger", "false", *overrides], run=False)


def test_quick_config_is_the_small_variant_and_the_paper_config_the_defaults():
    quick = _cli("early_fusion_unet")
    small = create_model("early_fusion_small", text_encoder="tiny")
    assert tuple(quick.model.hparams.decoder_channels) == tuple(small.hparams.decoder_channels)
    assert quick.model.hparams.bce_weight == small.hparams.bce_weight == 1.0
    assert quick.model.configure_optimizers().defaults["lr"] == 1e-3  # lr_scheduler: null
    paper = _cli("early_fusion_unet_paper").model
    assert isinstance(paper.augmentation, JointAugmentation)
    assert (paper.hparams.bce_weight, paper.hparams.roi_weight, paper.hparams.encoder_name) == (0.0, 0.1, "resnet34")
    optimizer = paper.optimizer([nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 3e-4


@pytest.mark.parametrize("seed", [0, 1])
def test_head_prior_starts_every_seed_at_the_foreground_fraction_and_trains_the_decoder(seed):
    torch.manual_seed(seed)
    model = _model(head_prior=0.05).train()
    batch = _batch()
    text = model.encode_text(batch["text"])
    logits = model(batch["image"], text)["logits"]
    assert (logits.sigmoid() - 0.05).abs().mean() < 0.005 and (logits.sigmoid() - 0.05).abs().max() < 0.03
    torch.manual_seed(seed)
    assert (_model().train()(batch["image"], text)["logits"].sigmoid() - 0.05).abs().mean() > 0.1  # smp's
    loss = model.compute_loss(model(batch["image"], text), batch["mask"], text)["loss"]
    loss.backward()
    decoder_grad = [p.grad for p in model.net.smp.model.decoder.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in decoder_grad)


@pytest.mark.parametrize("prior", [0.0, 1.0, 1.5])
def test_head_prior_outside_zero_one_is_refused(prior):
    with pytest.raises(ConfigError, match="head_prior is a foreground fraction in \\(0, 1\\)"):
        _model(head_prior=prior)
