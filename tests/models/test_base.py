import lightning as L
import pytest
import torch
from torch import nn

from langseg.data import SyntheticReferringDataModule
from langseg.models import LanguageGuidedSegmenter, UNetBaseline


class TextGate(LanguageGuidedSegmenter):
    """Smallest text-guided model: a conv net whose output is gated by the sentence embedding."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = nn.Conv2d(self.in_channels, 4, 3, padding=1)
        self.gate = nn.Linear(self.text_dim, 4)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, image, text):
        feats = torch.relu(self.conv(image)) * torch.sigmoid(self.gate(text.sentence))[..., None, None]
        return self.head(feats)


def _batch(n=4, size=32, texts=None):
    ds = SyntheticReferringDataModule(num_train=n, image_size=size, num_workers=0)
    ds.setup("fit")
    items = [ds.dataset("train")[i] for i in range(n)]
    return {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
            "text": texts or [i["text"] for i in items]}


def test_unet_baseline_has_no_text_encoder_and_ignores_text():
    model = UNetBaseline(encoder_name="resnet18", decoder_channels=(32, 16, 8, 8, 8))
    assert model.text_encoder is None and not model.use_text
    batch = _batch()
    model.eval()
    a = model.segment(batch["image"], batch["text"])["logits"]
    b = model.segment(batch["image"], list(reversed(batch["text"])))["logits"]
    assert a.shape == (4, 1, 32, 32) and torch.equal(a, b)


def test_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    model = TextGate(text_encoder="tiny", lr=0.05)
    opt = model.configure_optimizers()
    batch = _batch()
    losses = []
    for _ in range(30):
        loss = model.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_gradients_reach_the_text_path_not_the_frozen_encoder():
    model = TextGate(text_encoder="tiny")
    model.training_step(_batch(), 0).backward()
    assert model.gate.weight.grad.abs().sum() > 0
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
    assert not any(k.startswith("text_encoder.") for k in state) and "gate.weight" in state
    loaded = TextGate.load_from_checkpoint(path)
    assert torch.equal(loaded.gate.weight, model.gate.weight)
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
    assert sum(seen, []) == expected


def test_forward_must_be_implemented():
    with pytest.raises(NotImplementedError, match="must implement forward"):
        LanguageGuidedSegmenter(use_text=False)(torch.zeros(1, 1, 8, 8), None)
