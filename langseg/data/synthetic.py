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


def make_referring_sample(size: int, rng: np.random.Generator) -> ReferringSample:
    """One image, mask and referring text drawn from ``rng``."""
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

    kind = rng.choice(["zone", "side", "all", "size"])
    if kind == "zone":
        chosen = [lesions[int(rng.integers(n))]]
        text = f"One infected area in the {chosen[0][0]} lung."
    elif kind == "side":
        side = rng.choice(sorted({z.split()[1] for z, _, _ in lesions}))
        chosen = [les for les in lesions if les[0].endswith(side)]
        text = f"Unilateral infection, {_plural(len(chosen), 'infected area')}, {side} lung."
    elif kind == "all":
        chosen = lesions
        sides = {z.split()[1] for z, _, _ in lesions}
        where = "bilateral pulmonary infection" if len(sides) == 2 else f"infection of the {sides.pop()} lung"
        text = f"All lesions: {where}, {_plural(n, 'infected area')}."
    else:
        largest = rng.random() < 0.5
        ordered = sorted(lesions, key=lambda les: les[1], reverse=largest)
        chosen = [ordered[0]]
        text = f"The {'largest' if largest else 'smallest'} lesion, in the {chosen[0][0]} lung."
    mask = np.zeros((size, size), dtype=np.uint8)
    for _, _, blob in chosen:
        mask[blob] = 1
    return ReferringSample(image=np.clip(image, 0.0, 1.0), mask=mask, text=text)
