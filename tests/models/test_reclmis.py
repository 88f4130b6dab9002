import pytest
import torch

from langseg.cli import LangsegCLI
from langseg.data import SyntheticReferringDataModule
from langseg.models import LanguageGuidedSegmenter, RecLMIS
from langseg.data.datamodules import SegmentationDataModule
from langseg.profiling import count_parameters
from langseg.registry import create_model

WIDTHS = (4, 8, 16, 32, 32)
TRAINING_ONLY = ("vision_reconstructor", "text_reconstructor", "interaction.vision_to_text", "interaction.poi_head",
                 "interaction.woi_head")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids oversubscribing a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
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
        logits = model.segment(batch["image"], batch["text"])["logits"]
        model.validation_step(batch, 0)
        text = model.encode_text(batch["text"])
        exported = model.export_inference()(batch["image"], text.tokens, text.mask)
    assert calls == []
    assert torch.allclose(exported, logits, atol=1e-5)
    model.train()
    model(batch["image"], model.encode_text(batch["text"]))
    assert set(calls) == set(TRAINING_ONLY)  # the hooks do fire when the heads run


def test_exported_inference_graph_holds_no_training_only_weights():
    model = _model()
    exported = model.export_inference()
    keys = exported.state_dict().keys()
    assert not any("reconstructor" in k or "vision_to_text" in k or "_head" in k or "text_encoder" in k for k in keys)
    expected = sum(count_parameters(model.get_submodule(n)) for n in ("encoder", "decoder", "interaction.text_to_vision"))
    assert count_parameters(exported) == expected
    training_only = sum(count_parameters(model.get_submodule(n)) for n in TRAINING_ONLY)
    assert count_parameters(exported) + training_only == count_parameters(model)


def test_training_masks_follow_the_ratios_and_padding_words_get_zero_weight():
    model = _model(vision_mask_ratio=0.5, text_mask_ratio=0.3)
    batch = _batch(4)
    text = model.encode_text(["left lung.", "One infected area in the upper left lung, a rather long note.",
                              "All lesions.", "The largest lesion, in the lower right lung."])
    out = model.train()(batch["image"], text)
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
    total = losses["v2t"] + losses["t2v"] + 0.2 * losses["ccl"] + 5 * (losses["dice"] + losses["bce"])
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
    history = _train(model, batch, 20)
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] and last["seg"] < first["seg"]
    assert last["t2v"] < 0.5 * first["t2v"] and last["v2t"] < 0.5 * first["v2t"]
    swapped = batch["text"][1:] + batch["text"][:1]
    matched = torch.tensor([_reconstruction(model, batch, batch["text"], s) for s in range(5)]).mean(0)
    mismatched = torch.tensor([_reconstruction(model, batch, swapped, s) for s in range(5)]).mean(0)
    assert (matched < mismatched).all(), (matched, mismatched)


def test_photometric_augmentation_changes_only_the_image_and_is_off_by_default():
    assert _model().photometric is None
    model = _model(augment=True)
    batch = _batch(4)
    seen = []
    original = model.forward
    model.forward = lambda image, text: seen.append(image) or original(image, text)
    torch.manual_seed(1)
    model.training_step(batch, 0)
    assert seen[0].shape == batch["image"].shape and not torch.equal(seen[0], batch["image"])
    assert seen[0].amin() >= batch["image"].amin() - 1e-4 and seen[0].amax() <= batch["image"].amax() + 1e-4


def test_requires_text_and_sides_divisible_by_16():
    model = _model().eval()
    with pytest.raises(ValueError, match="needs text"):
        model(torch.zeros(1, 1, 32, 32), None)
    with pytest.raises(ValueError, match="multiples of 16"):
        model.segment(torch.zeros(1, 1, 40, 40), ["left lung."])


@pytest.mark.parametrize("config", ["configs/reclmis.yaml", "configs/reclmis_paper.yaml"])
def test_configs_parse(config):
    cli = LangsegCLI(LanguageGuidedSegmenter, SegmentationDataModule, subclass_mode_model=True,
                     subclass_mode_data=True, run=False,
                     args=["--config", config, "--model.init_args.text_encoder", "tiny", "--model.init_args.widths", "[4, 8, 16, 32, 32]",
                           "--trainer.logger", "false", "--trainer.callbacks", "[]"])
    assert isinstance(cli.model, RecLMIS) and cli.model.hparams.seg_weight == 5.0
    assert cli.model.hparams.augment == (config == "configs/reclmis_paper.yaml")
