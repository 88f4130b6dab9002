import pytest
import torch
from torch import nn

from langseg.blocks.augmentation import PhotometricAugmentation
from langseg.data import SyntheticReferringDataModule
from langseg.errors import ConfigError
from langseg.lightning_cli import build_cli
from langseg.losses import conditioned_contrastive_loss
from langseg.models import RecLMIS, RecLMISNet
from langseg.profiling import count_parameters
from langseg.registry import create_model

WIDTHS = (4, 8, 16, 32, 32)
INFERENCE = ("encoder", "interaction.text_to_vision", "decoder")
TRAINING_ONLY = ("vision_reconstructor", "text_reconstructor", "interaction.vision_to_text", "interaction.poi_head",
                 "interaction.woi_head")


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**kwargs):
    torch.manual_seed(0)
    return RecLMIS(text_encoder="tiny", widths=WIDTHS, num_heads=4, **kwargs)


def _batch(n=8, size=32):
    dm = SyntheticReferringDataModule(num_train=n, image_size=size, num_workers=0)
    dm.setup("fit")
    items = [dm.dataset("train")[i] for i in range(n)]
    return {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
            "text": [i["text"] for i in items]}


def _hooks(model):
    calls = []
    for name in TRAINING_ONLY:
        model.net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    return calls


def test_registered_and_logits_at_two_sizes():
    assert isinstance(create_model("reclmis", text_encoder="tiny", widths=WIDTHS, num_heads=4), RecLMIS)
    model = _model().eval()
    for size in (32, 64):
        batch = _batch(2, size)
        assert model.segment(batch["image"], batch["text"])["logits"].shape == (2, 1, size, size)


def test_inference_never_runs_the_reconstructors_or_the_vision_to_text_half():
    model = _model()
    calls = _hooks(model)
    batch = _batch(4, size=32)
    model.eval()
    with torch.no_grad():
        out = model.segment(batch["image"], batch["text"])
        model.validation_step(batch, 0)
        for name in TRAINING_ONLY:  # the eval logits cannot depend on weights that do not run
            for p in model.net.get_submodule(name).parameters():
                p.add_(torch.randn_like(p))
        perturbed = model.segment(batch["image"], batch["text"])["logits"]
    assert calls == []
    assert set(out) == {"logits"} and torch.equal(perturbed, out["logits"])
    model.train()
    model(batch["image"], model.encode_text(batch["text"]))
    assert set(calls) == set(TRAINING_ONLY)  # the hooks do fire when the heads run


def test_inference_parameters_hold_no_training_only_weights():
    model = _model()
    net = model.net
    assert net.inference_modules == INFERENCE
    inference = {id(p) for p in net.inference_parameters()}
    training_only = {id(p) for name in TRAINING_ONLY for p in net.get_submodule(name).parameters()}
    assert inference and training_only and not inference & training_only
    expected = sum(count_parameters(net.get_submodule(n)) for n in INFERENCE)
    assert sum(p.numel() for p in net.inference_parameters()) == expected
    training_count = sum(count_parameters(net.get_submodule(n)) for n in TRAINING_ONLY)
    assert expected + training_count == count_parameters(net) == count_parameters(model)  # model: no text encoder


def test_training_masks_follow_the_ratios_and_padding_words_get_zero_weight():
    model = _model(vision_mask_ratio=0.5, text_mask_ratio=0.3)
    batch = _batch(4)
    text = model.encode_text(["left lung.", "One infected area in the upper left lung, a rather long note.",
                              "All lesions.", "The largest lesion, in the lower right lung."])
    out = model.train()(batch["image"], text)
    assert model.net.vision_mask_ratio == 0.5 and model.net.text_mask_ratio == 0.3
    n_words = text.mask.sum(1)
    assert (out["patch_masked"].sum(1) == out["v"].shape[1] // 2).all()
    assert torch.equal(out["word_masked"].sum(1), (n_words * 0.3).floor().clamp_min(1).long())
    assert not (out["word_masked"] & ~text.mask).any()
    assert (out["w_woi"][~text.mask] == 0).all() and (~text.mask).any()
    assert torch.allclose(out["w_woi"].sum(1), torch.ones(4)) and torch.allclose(out["w_poi"].sum(1), torch.ones(4))


def test_loss_has_every_term_of_eq_11_and_eval_loss_only_segmentation():
    model = _model(v2t_weight=1.0, t2v_weight=1.0, ccl_weight=0.2, seg_weight=5.0)
    batch = _batch(4)
    text = model.encode_text(batch["text"])
    losses = model.compute_loss(model.train()(batch["image"], text), batch["mask"], text)
    hp = model.hparams
    seg = hp.dice_weight * losses["dice"] + hp.bce_weight * losses["bce"]
    assert torch.allclose(losses["seg"], seg)
    total = (hp.v2t_weight * losses["v2t"] + hp.t2v_weight * losses["t2v"] + hp.ccl_weight * losses["ccl"]
             + hp.seg_weight * seg)
    assert torch.allclose(losses["loss"], total)
    model.eval()
    with torch.no_grad():
        losses = model.compute_loss(model.segment(batch["image"], batch["text"]), batch["mask"], text)
    assert set(losses) == {"loss", "dice", "bce", "seg"}


def _train(model, batch, steps):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    history = []
    for _ in range(steps):
        text = model.encode_text(batch["text"])
        losses = model.compute_loss(model(batch["image"], text), batch["mask"], text)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    return history


def _reconstruction(model, batch, texts, seed):
    torch.manual_seed(seed)
    text = model.encode_text(texts)
    with torch.no_grad():
        losses = model.compute_loss(model.train()(batch["image"], text), batch["mask"], text)
    return losses["t2v"].item(), losses["v2t"].item()


def test_reconstruction_losses_fall_and_are_higher_for_mismatched_text():
    model = _model()
    batch = _batch(8, size=32)
    history = _train(model, batch, 40)  # the varied wording needs more than 20 steps to tell texts apart
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] and last["seg"] < first["seg"]
    assert last["t2v"] < 0.5 * first["t2v"] and last["v2t"] < 0.5 * first["v2t"]
    swapped = batch["text"][1:] + batch["text"][:1]
    matched = torch.tensor([_reconstruction(model, batch, batch["text"], s) for s in range(5)]).mean(0)
    mismatched = torch.tensor([_reconstruction(model, batch, swapped, s) for s in range(5)]).mean(0)
    assert (matched < mismatched).all(), (matched, mismatched)


def test_photometric_augmentation_is_the_default_and_off_in_the_small_variant():
    assert isinstance(_model().augmentation, PhotometricAugmentation)
    assert _model(augmentation=False).augmentation is None
    assert create_model("reclmis_small", text_encoder="tiny").augmentation is None
    custom = PhotometricAugmentation(p=1.0)
    assert _model(augmentation=custom).augmentation is custom


def test_photometric_augmentation_changes_only_the_image():
    model = _model()  # the default: PhotometricAugmentation
    batch = _batch(4)
    seen = []
    original = model.forward
    model.forward = lambda image, text: seen.append(image) or original(image, text)
    scored = []

    def compute_loss(outputs, mask, text):
        scored.append(mask)
        return RecLMIS.compute_loss(model, outputs, mask, text)

    model.compute_loss = compute_loss
    torch.manual_seed(1)
    model.training_step(batch, 0)
    assert seen[0].shape == batch["image"].shape and not torch.equal(seen[0], batch["image"])
    assert seen[0].amin() >= batch["image"].amin() - 1e-4 and seen[0].amax() <= batch["image"].amax() + 1e-4
    assert torch.equal(scored[0], batch["mask"])


class Spy(nn.Module):
    """Records its inputs and returns a recognisable image: the input inverted."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, image, mask, *aligned):
        self.calls.append((image, mask, aligned))
        return (-image, mask, *aligned)


def test_the_base_training_step_applies_the_augmentation_through_transform_train_batch():
    spy = Spy()
    model = _model(augmentation=spy)
    batch = _batch(4)
    transformed, seen = [], []
    original_transform, original_forward = model.transform_train_batch, model.forward
    model.transform_train_batch = lambda b, text: transformed.append(original_transform(b, text)) or transformed[-1]
    model.forward = lambda image, text: seen.append(image) or original_forward(image, text)
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)
    ((image, mask, aligned),) = spy.calls  # one call per training step, on the batch's image and mask
    assert image is batch["image"] and mask is batch["mask"] and aligned == ()
    assert torch.equal(transformed[0]["image"], -batch["image"]) and transformed[0]["mask"] is batch["mask"]
    assert torch.equal(seen[0], -batch["image"])  # the network sees the augmented image
    model.eval()
    with torch.no_grad():
        model.validation_step(batch, 0)
        model.predict_step({**batch, "id": ["a"] * 4, "orig_size": torch.full((4, 2), 32)}, 0)
    assert len(spy.calls) == 1  # never outside training


def test_requires_text_and_sides_divisible_by_16():
    model = _model().eval()
    assert model.output_stride == 16
    with pytest.raises(ConfigError, match="needs text"):
        model(torch.zeros(1, 1, 32, 32), None)
    with pytest.raises(ConfigError, match="needs text"):
        model.net(torch.zeros(1, 1, 32, 32), None)
    with pytest.raises(ConfigError, match="multiples of 16"):
        model.segment(torch.zeros(1, 1, 40, 40), ["left lung."])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        RecLMISNet(text_dim=8, widths=WIDTHS, num_heads=4, vision_mask_ratio=1.5)


def _cli(config, *overrides):
    return build_cli(["--config", config, "--model.init_args.text_encoder", "tiny", "--model.init_args.widths",
                      "[4, 8, 16, 32, 32]", "--trainer.logger", "false", "--trainer.callbacks", "[]", *overrides],
                     run=False)


@pytest.mark.parametrize("config", ["configs/reclmis.yaml", "configs/reclmis_paper.yaml"])
def test_configs_parse(config):
    cli = _cli(config)
    assert isinstance(cli.model, RecLMIS) and cli.model.hparams.seg_weight == 5.0
    if config == "configs/reclmis_paper.yaml":
        assert isinstance(cli.model.augmentation, PhotometricAugmentation)
        optimizer = cli.model.optimizer([nn.Parameter(torch.zeros(1))])
        assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 3e-4
    else:
        assert cli.model.augmentation is None
        assert cli.model.configure_optimizers().defaults["lr"] == 1e-3  # lr_scheduler: null


def test_augmentation_can_be_switched_off_on_the_command_line():
    assert _cli("configs/reclmis_paper.yaml", "--model.augmentation", "false").model.augmentation is None



OFFICIAL_TRAINING_ONLY = ("vision_reconstructor", "text_reconstructor", "interaction.text_out", "interaction.poi_head",
                          "interaction.woi_head")


def test_official_interaction_runs_differs_from_the_paper_form_and_trains_every_weight():
    batch = _batch(4, size=32)
    paper, official = _model(), _model(interaction="official", aux_losses="official")
    assert official.net.inference_modules == ("encoder", "interaction.fusion", "decoder")
    official.net.encoder.load_state_dict(paper.net.encoder.state_dict())
    official.net.decoder.load_state_dict(paper.net.decoder.state_dict())
    with torch.no_grad():
        logits = [m.eval().segment(batch["image"], batch["text"])["logits"] for m in (paper, official)]
    assert logits[0].shape == logits[1].shape == (4, 1, 32, 32) and not torch.allclose(*logits)
    text = official.encode_text(batch["text"])
    losses = official.compute_loss(official.train()(batch["image"], text), batch["mask"], text)
    assert set(losses) == {"loss", "dice", "bce", "seg", "t2v", "v2t", "ccl"}
    losses["loss"].backward()
    assert all(p.grad is not None for p in official.net.parameters())  # every weight, the heads included


def test_official_inference_runs_only_the_fusion_and_its_parameters_are_what_runs():
    model = _model(interaction="official")
    calls = []
    for name in OFFICIAL_TRAINING_ONLY:
        model.net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    batch = _batch(2, size=32)
    with torch.no_grad():
        model.eval().segment(batch["image"], batch["text"])
    assert calls == []
    net = model.net
    inference = sum(count_parameters(net.get_submodule(n)) for n in net.inference_modules)
    training = sum(count_parameters(net.get_submodule(n)) for n in OFFICIAL_TRAINING_ONLY)
    assert sum(p.numel() for p in net.inference_parameters()) == inference
    assert inference + training == count_parameters(net)


def test_official_aux_losses_are_plain_mse_against_v_prime_and_the_encoder_words_with_gradient():
    model = _model(interaction="official", aux_losses="official")
    batch = _batch(4, size=32)
    text = model.encode_text(batch["text"])
    out = model.train()(batch["image"], text)
    assert out["e_hat"].shape == text.tokens.shape  # rebuilt at the text encoder's width
    losses = model.compute_loss(out, batch["mask"], text)
    assert torch.allclose(losses["t2v"], (out["v_hat"] - out["v_prime"]).pow(2).mean())
    assert torch.allclose(losses["v2t"], (out["e_hat"] - text.tokens).pow(2).mean())
    (grad,) = torch.autograd.grad(losses["t2v"], model.net.interaction.fusion.vision_attn.out_proj.weight)
    assert grad.abs().sum() > 0  # the target V' is not detached, as in the official code
    with pytest.raises(ConfigError, match="aux_losses='both'"):
        _model(aux_losses="both")
    with pytest.raises(ConfigError, match="interaction='code'"):
        _model(interaction="code")


def test_ccl_softmax_twice_softmaxes_the_weights_again_over_every_position_and_only_for_the_contrastive_loss():
    batch = _batch(4)
    once, twice = _model(), _model(ccl_softmax="twice")
    text = once.encode_text(batch["text"])
    torch.manual_seed(3)
    out = once.train()(batch["image"], text)
    a, b = once.compute_loss(out, batch["mask"], text), twice.compute_loss(out, batch["mask"], text)
    assert all(torch.equal(a[k], b[k]) for k in ("t2v", "v2t", "seg"))  # the reconstruction losses keep W
    again = [w.exp() / w.exp().sum(-1, keepdim=True) for w in (out["w_poi"], out["w_woi"])]  # padding too: e^0
    assert (again[1][~out["word_mask"]] > 0).all()
    expected = conditioned_contrastive_loss(out["v"], out["e"], *again, out["word_mask"], twice.hparams.ccl_temperature)
    assert torch.allclose(b["ccl"], expected) and not torch.allclose(a["ccl"], b["ccl"])
    with pytest.raises(ConfigError, match="ccl_softmax='thrice'"):
        _model(ccl_softmax="thrice")


def test_official_reconstructors_train_every_weight_and_never_run_at_inference():
    model = _model(interaction="official", aux_losses="official", reconstructor="official", head_dropout=0.5)
    net = model.net
    assert len(net.vision_reconstructor.context_layers) == len(net.text_reconstructor.query_layers) == 3
    batch = _batch(4, size=32)
    text = model.encode_text(batch["text"])
    out = model.train()(batch["image"], text)
    assert out["v_hat"].shape == out["v_prime"].shape and out["e_hat"].shape == text.tokens.shape
    model.compute_loss(out, batch["mask"], text)["loss"].backward()
    assert all(p.grad is not None for p in net.parameters())
    calls = []
    for name in OFFICIAL_TRAINING_ONLY:
        net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    with torch.no_grad():
        model.eval().segment(batch["image"], batch["text"])
    assert calls == []
    with pytest.raises(ConfigError, match="reconstructor='code'"):
        _model(reconstructor="code")
    with pytest.raises(ConfigError, match="head_dropout=1.0"):
        _model(head_dropout=1.0)


def test_mask_topup_masks_the_full_count_when_the_weights_underflow():
    batch = _batch(4, size=64)  # 4 x 4 patches: alpha_v = 0.5 masks 8
    for topup in (False, True):
        model = _model(mask_topup=topup)
        for head in (model.net.interaction.poi_head, model.net.interaction.woi_head):
            head[-1].weight.data.mul_(1e6)  # logits far apart: the softmax weights underflow to exact zeros
        text = model.encode_text(batch["text"])
        out = model.train()(batch["image"], text)
        positive_patches, positive_words = (out["w_poi"] > 0).sum(1), (out["w_woi"] > 0).sum(1)
        word_count = (out["word_mask"].sum(1) * 0.3).floor().clamp_min(1).long()  # alpha_t = 0.3 of the real words
        assert (positive_patches < 8).all() and (positive_words < word_count).any()
        assert not (out["word_masked"] & ~out["word_mask"]).any()
        if topup:
            assert (out["patch_masked"].sum(1) == 8).all() and torch.equal(out["word_masked"].sum(1), word_count)
        else:
            assert torch.equal(out["patch_masked"].sum(1), positive_patches)
            assert torch.equal(out["word_masked"].sum(1), torch.minimum(word_count, positive_words))


def test_ccl_padding_zero_scores_padding_words_as_zero_in_the_model_loss():
    batch = _batch(4)
    exclude, zero = _model(), _model(ccl_padding="zero")
    text = exclude.encode_text(batch["text"])
    torch.manual_seed(3)
    out = dict(exclude.train()(batch["image"], text))
    padded = int((~out["word_mask"]).any(1).nonzero()[0])
    out["e"] = out["e"].clone()
    out["e"][padded] = -out["v"][padded, 0]  # the padded text faces away from its image's first patch
    a, b = exclude.compute_loss(out, batch["mask"], text), zero.compute_loss(out, batch["mask"], text)
    args = out["v"], out["e"], out["w_poi"], out["w_woi"], out["word_mask"], 0.07
    assert torch.equal(a["ccl"], conditioned_contrastive_loss(*args))
    assert torch.equal(b["ccl"], conditioned_contrastive_loss(*args, padding="zero")) and b["ccl"] != a["ccl"]
    with pytest.raises(ConfigError, match="ccl_padding='none'"):
        _model(ccl_padding="none")
