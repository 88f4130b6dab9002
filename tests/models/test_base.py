import csv
import json

import lightning as L
import pytest
import torch

from langseg.blocks.augmentation import JointAugmentation
from langseg.callbacks import TestReport
from langseg.data import SyntheticReferringDataModule
from langseg.errors import ConfigError
from langseg.models import LanguageGuidedSegmenter, UNetBaseline
from tests.conftest import synthetic_batch
from tests.tiny_models import TextGate


def sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr)


def test_unet_baseline_has_no_text_encoder_and_ignores_text():
    model = UNetBaseline(encoder_name="resnet18", decoder_channels=(32, 16, 8, 8, 8))
    assert model.text_encoder is None and not model.use_text
    batch = synthetic_batch()
    model.eval()
    a = model.segment(batch["image"], batch["text"])["logits"]
    b = model.segment(batch["image"], list(reversed(batch["text"])))["logits"]
    assert a.shape == (4, 1, 32, 32) and torch.equal(a, b)


def test_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    model = TextGate(text_encoder="tiny", optimizer=lambda params: torch.optim.AdamW(params, lr=0.05))
    opt = model.configure_optimizers()
    batch = synthetic_batch()
    losses = []
    for _ in range(30):
        loss = model.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_optimizer_and_scheduler_come_from_the_constructor():
    model = TextGate(text_encoder="tiny", optimizer=sgd(0.25),
                     lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3))
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD) and config["optimizer"].param_groups[0]["lr"] == 0.25
    assert isinstance(config["lr_scheduler"], torch.optim.lr_scheduler.StepLR)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in config["optimizer"].param_groups[0]["params"]} == trainable
    assert not any(id(p) in trainable for p in model.text_encoder.parameters())  # frozen encoder left out


def test_augmentation_is_applied_by_the_base_training_step_only():
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, image, mask):
            calls.append(image.shape)
            return image.flip(-1), mask.flip(-1)

    model = TextGate(text_encoder="tiny", augmentation=Spy())
    batch = synthetic_batch()
    model.training_step(batch, 0)
    assert len(calls) == 1
    model.eval()
    with torch.no_grad():
        model.validation_step(batch, 0)
    assert len(calls) == 1
    assert TextGate(text_encoder="tiny").augmentation is None  # the base's default: none
    assert TextGate(text_encoder="tiny", augmentation=False).augmentation is None


def test_transform_train_batch_moves_image_and_mask_together():
    torch.manual_seed(0)
    model = TextGate(text_encoder="tiny", augmentation=JointAugmentation(hflip_prob=1.0, affine_prob=0.0))
    batch = synthetic_batch()
    out = model.transform_train_batch(batch, None)
    assert torch.equal(out["image"], batch["image"].flip(-1)) and torch.equal(out["mask"], batch["mask"].flip(-1))


def test_gradients_reach_the_text_path_not_the_frozen_encoder():
    model = TextGate(text_encoder="tiny")
    model.training_step(synthetic_batch(), 0).backward()
    assert model.net.gate.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.parameters())


def test_checkpoint_leaves_out_the_frozen_text_encoder_and_reloads(tmp_path):
    model = TextGate(text_encoder="tiny")
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, limit_val_batches=1)
    dm = SyntheticReferringDataModule(num_train=8, num_val=4, num_test=4, image_size=32, batch_size=4, num_workers=0)
    trainer.fit(model, dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert not any(k.startswith("text_encoder.") for k in state) and "net.gate.weight" in state
    loaded = TextGate.load_from_checkpoint(path)
    assert torch.equal(loaded.net.gate.weight, model.net.gate.weight)
    assert torch.equal(loaded.text_encoder.model.embeddings.word_embeddings.weight,
                       model.text_encoder.model.embeddings.word_embeddings.weight)


def test_test_loop_logs_both_dice_definitions_and_swapped_text():
    model = TextGate(text_encoder="tiny")
    dm = SyntheticReferringDataModule(num_train=8, num_val=4, num_test=8, image_size=32, batch_size=4, num_workers=0)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    seen = []
    original = model.segment
    model.segment = lambda image, texts: seen.append(list(texts)) or original(image, texts)
    (result,) = trainer.test(model, dm)
    assert {"test/dice", "test/miou", "test/dice_pooled", "test/miou_pooled", "test/dice_swapped_text"} <= set(result)
    ds = dm.dataset("test")
    expected = [ds.dataset.text_of(ds.partner[i]) for i in range(8)]
    assert sum(seen[0::3], []) == expected  # per batch: swapped, neutral, then the alternative texts
    assert sum(seen[1::3], []) == [""] * 8
    assert sum(seen[2::3], []) == [ds.dataset.columns_of(i)["text_short"] for i in range(8)]


class ShortTextOracle(LanguageGuidedSegmenter):
    """Predicts every pixel for a text of fewer than four words (the neutral text, a ``text_short``), none for a
    longer one (every full text of the embedded data): a text-following model whose Dice is known."""

    def __init__(self) -> None:
        super().__init__(text_encoder="tiny")

    def encode_text(self, texts):
        return texts

    def forward(self, image, text, **net_inputs):
        everything = torch.tensor([len(t.split()) < 4 for t in text], dtype=image.dtype) * 20 - 10
        return {"logits": everything[:, None, None, None].expand(-1, 1, *image.shape[-2:])}


def test_no_text_alternative_text_and_category_dice_are_those_of_their_texts(tmp_path):
    dm = SyntheticReferringDataModule(num_test=12, image_size=32, batch_size=4, num_workers=0)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TestReport(str(tmp_path), hd95=False)])
    (result,) = trainer.test(ShortTextOracle(), dm)
    items = [dm.dataset("test")[i] for i in range(12)]
    full = [float(2 * it["mask"].sum() / (it["mask"].sum() + it["mask"].numel())) for it in items]  # all-foreground Dice
    assert result["test/dice"] == 0 and result["test/dice_swapped_text"] == 0
    assert result["test/dice_no_text"] == pytest.approx(sum(full) / 12)
    assert result["test/dice@text_short"] == pytest.approx(sum(full) / 12)
    summary = json.loads((tmp_path / "test_summary.json").read_text())
    categories = {it["columns"]["category"] for it in items}
    assert set(summary["dice_by_category"]["category"]) == categories and len(categories) > 1
    for category, entry in summary["dice_by_category"]["category"].items():
        of_category = [f for f, it in zip(full, items) if it["columns"]["category"] == category]
        assert entry["images"] == len(of_category) and entry["dice"] == 0  # the full texts predict nothing
    assert summary["dice@text_short"] == pytest.approx(sum(full) / 12)
    assert {f"test/dice_by_category/category={c}" for c in categories} <= set(result)
    with (tmp_path / "test_per_image.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["category"] for r in rows] == [it["columns"]["category"] for it in items]
    assert [float(r["dice@text_short"]) for r in rows] == pytest.approx(full)


def test_a_method_must_build_its_network():
    with pytest.raises(NotImplementedError, match="must build self.net"):
        LanguageGuidedSegmenter(use_text=False)(torch.zeros(1, 1, 8, 8), None)


def test_a_text_only_method_refuses_use_text_false():
    class NeedsText(TextGate):
        requires_text = True

    with pytest.raises(ConfigError, match="NeedsText cannot run without text"):
        NeedsText(use_text=False)


def test_bad_python_api_calls_raise_clear_langseg_errors():
    import langseg

    with pytest.raises(ConfigError, match=r"in_channels=0; expected the number of image channels"):
        langseg.create_model("unet", in_channels=0)
    model = TextGate(text_encoder="tiny", in_channels=1)
    batch = synthetic_batch(2)
    with pytest.raises(ConfigError, match=r"image of shape \(1, 32, 32\); TextGate expects a \(batch, 1, height"):
        model.segment(batch["image"][0], batch["text"][:1])
    with pytest.raises(ConfigError, match=r"image of shape \(2, 3, 32, 32\)"):
        model.segment(batch["image"].expand(-1, 3, -1, -1), batch["text"])
    with pytest.raises(ConfigError, match=r"a list of strings, one per image; got the single string 'left lung'"):
        model.segment(batch["image"][:1], "left lung")
    with pytest.raises(ConfigError, match=r"1 texts for 2 images"):
        model.segment(batch["image"], batch["text"][:1])


def test_all_empty_training_masks_warn_with_the_csv(tmp_path, one_thread):
    from PIL import Image

    from langseg.data import ImageTextMaskDataModule
    from tests.conftest import write_generic_folder

    data = write_generic_folder(tmp_path / "data", {"train": 4, "val": 2, "test": 2})
    for mask in (data / "masks").glob("train_*.png"):
        Image.new("L", (40, 40)).save(mask)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
    dm = ImageTextMaskDataModule(str(data), image_size=32, batch_size=2, num_workers=0)
    with pytest.warns(UserWarning, match=r"train.csv: every training mask of epoch 0 is empty"):
        trainer.fit(TextGate(text_encoder="tiny"), dm)


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_steps_with_its_fused_kernel_unless_turned_off_and_updates_the_same(fused):
    batch = synthetic_batch()
    weights = []
    for use in (fused, not fused):
        torch.manual_seed(0)
        model = TextGate(text_encoder="tiny", fused_optimizer=use,
                         optimizer=lambda params: torch.optim.AdamW(params, lr=0.05))
        opt = model.configure_optimizers()
        assert opt.param_groups[0]["fused"] is (True if use else None)
        for _ in range(3):
            text = model.encode_text(batch["text"])
            loss = model.compute_loss(model(batch["image"], text), batch["mask"], text)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(weights[0], weights[1], atol=1e-5)
    foreach = TextGate(text_encoder="tiny", optimizer=lambda params: torch.optim.AdamW(params, foreach=False))
    assert foreach.configure_optimizers().param_groups[0]["fused"] is None  # the user's choice is kept
