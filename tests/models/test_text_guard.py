"""The guard against text-blind models: each text-guided method, trained briefly on films where only the text
says which lung's lesion to segment, moves its mask to the side each text names.

A model that ignores its text gives the same mask for both texts of a film, so it cannot put more mass on
the left for "left" and more on the right for "right": the check cannot pass for it, however long it trains
(``test_the_side_check_fails_when_the_text_is_cut`` shows it on a model whose text features are zeroed).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

import langseg
from langseg.blocks import TextFeatures
from langseg.data.transforms import normalize
from langseg.models.base import adamw
from tests.tiny_models import tiny_overrides

SIZE = 32
FILMS = 4
TEXTS = ("left", "right")  # the patient's sides: the left lung is on the image's right
CHUNK, MAX_STEPS = 10, 200  # the check runs after every CHUNK steps; training stops once it holds (20-130 steps)
TEXT_GUIDED = [n for n in langseg.list_models("*_small") if n != "unet_small"]  # all but the image-only U-Net

pytestmark = pytest.mark.usefixtures("one_thread")


def two_sided_films(n: int, size: int, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
    """``n`` films ``(n, 1, S, S)`` in [0, 1] with one bright lesion in each lung, and each side's lesion masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    films, masks = [], {"left": [], "right": []}
    for _ in range(n):
        film = 0.3 + 0.05 * rng.standard_normal((size, size)).astype(np.float32)
        for side, col in (("right", 0.28), ("left", 0.72)):  # patient's right lung on the image's left
            cy, cx = rng.uniform(0.3, 0.7) * size, (col + rng.uniform(-0.06, 0.06)) * size
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < (rng.uniform(0.08, 0.14) * size) ** 2
            film[blob] += 0.5
            masks[side].append(blob)
        films.append(film)
    return torch.tensor(np.stack(films))[:, None], {k: torch.tensor(np.stack(v))[:, None].float() for k, v in masks.items()}


def follows_the_side(model: langseg.models.LanguageGuidedSegmenter, image: Tensor) -> bool:
    """Whether, for every film, the text "left" puts more predicted probability mass on the patient's left
    half (the image's right) than on the other, and "right" the reverse."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        prob = {text: torch.sigmoid(model.segment(image, [text] * len(image))["logits"])[:, 0] for text in TEXTS}
    model.train(was_training)
    half = SIZE // 2
    left_minus_right = {text: p[..., half:].sum((1, 2)) - p[..., :half].sum((1, 2)) for text, p in prob.items()}
    return bool((left_minus_right["left"] > 0).all() and (left_minus_right["right"] < 0).all())


def train_on_sides(model: langseg.models.LanguageGuidedSegmenter, seed: int = 0) -> bool:
    """Trains ``model`` on two-sided films, each with both texts, until it follows the side (at most
    ``MAX_STEPS`` steps); returns whether it does."""
    films, masks = two_sided_films(FILMS, SIZE, seed)
    image = normalize(films, (0.5,), (0.25,)).expand(-1, model.in_channels, -1, -1)
    batch = {"image": torch.cat([image, image]), "mask": torch.cat([masks["left"], masks["right"]]),
             "text": [TEXTS[0]] * FILMS + [TEXTS[1]] * FILMS}
    optimizer = model.configure_optimizers()
    model.train()
    for step in range(MAX_STEPS):
        loss = model.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % CHUNK == 0 and follows_the_side(model, image):
            return True
    return False


def build(name: str) -> langseg.models.LanguageGuidedSegmenter:
    """The tiny build of ``name``: no augmentation (a flip swaps the sides), AdamW at 5e-3, no schedule."""
    torch.manual_seed(0)
    return langseg.create_model(name, **tiny_overrides(name), augmentation=False, lr_scheduler=False,
                                optimizer=adamw(5e-3))


@pytest.mark.parametrize("name", TEXT_GUIDED)
def test_the_mask_moves_to_the_side_the_text_names(name):
    model = build(name)
    assert model.use_text and train_on_sides(model)


def test_the_side_check_fails_when_the_text_is_cut(monkeypatch):
    model = build("lsms_small")
    encode = model.encode_text

    def zeroed(texts: list[str]) -> TextFeatures:
        f = encode(texts)
        hidden = tuple(torch.zeros_like(h) for h in f.hidden_states) if f.hidden_states is not None else None
        return TextFeatures(torch.zeros_like(f.tokens), f.mask, torch.zeros_like(f.sentence), hidden)

    monkeypatch.setattr(model, "encode_text", zeroed)
    assert not train_on_sides(model)
