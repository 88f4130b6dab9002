"""Procedural referring-lesion data: several lesions per image, and only the text says which are in the mask.

Each image shows two lung fields with 2-3 bright lesions in distinct zones (upper/lower x left/right)
and of distinct sizes. The text picks the target: one zone ("upper left lung"), one side ("left
lung"), the largest or smallest lesion, or all of them. An image-only model can at best guess, so a
model that reads the text wins, and ``test/dice_swapped_text`` falls when the text is swapped.

Sides follow the radiological convention of a chest X-ray shown in PA view: the patient's *left* is
on the *right* of the image. A horizontal flip therefore changes the meaning of the text.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ZONES = ("upper right", "upper left", "lower right", "lower left")  # patient's sides; image left = patient right
NUMBERS = {1: "one", 2: "two", 3: "three"}


@dataclass
class ReferringSample:
    image: np.ndarray  # (S, S) float32 in [0, 1]
    mask: np.ndarray  # (S, S) uint8 in {0, 1}
    text: str


def _zone_centre(zone: str, size: int, rng: np.random.Generator) -> tuple[float, float]:
    vertical, side = zone.split()
    row = 0.33 if vertical == "upper" else 0.66
    col = 0.28 if side == "right" else 0.72  # patient's right lung is on the image's left
    jitter = rng.uniform(-0.05, 0.05, size=2)
    return (row + jitter[0]) * size, (col + jitter[1]) * size


def _plural(n: int, word: str) -> str:
    return f"{NUMBERS[n]} {word}" + ("s" if n > 1 else "")


Lesion = tuple[str, float, np.ndarray]  # zone, radius, boolean blob (S, S)


def _draw_film(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[Lesion]]:
    """Two dark lung fields with 2-3 bright lesions in distinct zones and of distinct sizes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = 0.55 + 0.05 * rng.standard_normal((size, size)).astype(np.float32)
    for col in (0.28, 0.72):  # dark lung fields
        lung = ((yy / size - 0.5) / 0.36) ** 2 + ((xx / size - col) / 0.17) ** 2 < 1.0
        image[lung] -= 0.3
    n = int(rng.integers(2, 4))
    zones = [ZONES[i] for i in rng.permutation(4)[:n]]
    radii = np.sort(rng.choice(np.linspace(0.04, 0.11, 8), size=n, replace=False))[::-1] * size
    radii = radii[rng.permutation(n)]
    lesions = []
    for zone, radius in zip(zones, radii):
        cy, cx = _zone_centre(zone, size, rng)
        ry, rx = radius * rng.uniform(0.8, 1.2, size=2)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        image[blob] += 0.5 + 0.05 * rng.standard_normal(int(blob.sum())).astype(np.float32)
        lesions.append((zone, radius, blob))
    return np.clip(image, 0.0, 1.0), lesions


def _sides(lesions: list[Lesion]) -> list[str]:
    return sorted({zone.split()[1] for zone, _, _ in lesions})


def _zone_text(lesion: Lesion) -> tuple[str, list[Lesion]]:
    return f"One infected area in the {lesion[0]} lung.", [lesion]


def _side_text(lesions: list[Lesion], side: str) -> tuple[str, list[Lesion]]:
    chosen = [les for les in lesions if les[0].endswith(side)]
    return f"Unilateral infection, {_plural(len(chosen), 'infected area')}, {side} lung.", chosen


def _all_text(lesions: list[Lesion]) -> tuple[str, list[Lesion]]:
    sides = _sides(lesions)
    where = "bilateral pulmonary infection" if len(sides) == 2 else f"infection of the {sides[0]} lung"
    return f"All lesions: {where}, {_plural(len(lesions), 'infected area')}.", lesions


def _size_text(lesions: list[Lesion], largest: bool) -> tuple[str, list[Lesion]]:
    chosen = sorted(lesions, key=lambda les: les[1], reverse=largest)[0]
    return f"The {'largest' if largest else 'smallest'} lesion, in the {chosen[0]} lung.", [chosen]


def _sample(image: np.ndarray, text: str, chosen: list[Lesion]) -> ReferringSample:
    mask = np.zeros(image.shape, dtype=np.uint8)
    for _, _, blob in chosen:
        mask[blob] = 1
    return ReferringSample(image=image, mask=mask, text=text)


def make_referring_sample(size: int, rng: np.random.Generator) -> ReferringSample:
    """One image, mask and referring text drawn from ``rng``."""
    image, lesions = _draw_film(size, rng)
    kind = rng.choice(["zone", "side", "all", "size"])
    if kind == "zone":
        text, chosen = _zone_text(lesions[int(rng.integers(len(lesions)))])
    elif kind == "side":
        text, chosen = _side_text(lesions, rng.choice(_sides(lesions)))
    elif kind == "all":
        text, chosen = _all_text(lesions)
    else:
        text, chosen = _size_text(lesions, largest=rng.random() < 0.5)
    return _sample(image, text, chosen)


def referring_variants(size: int, rng: np.random.Generator) -> list[ReferringSample]:
    """Every referring text of the image that ``make_referring_sample`` draws from the same ``rng`` state, each
    with its mask: one per zone, one per side, all lesions, the largest and the smallest."""
    image, lesions = _draw_film(size, rng)
    found = [_zone_text(les) for les in lesions] + [_side_text(lesions, side) for side in _sides(lesions)]
    found += [_all_text(lesions), _size_text(lesions, largest=True), _size_text(lesions, largest=False)]
    return [_sample(image, text, chosen) for text, chosen in found]
