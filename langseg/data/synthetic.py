"""Procedural referring-lesion data: several lesions per image, and only the text says which are in the mask.

Each image shows two lung fields with 2-3 bright lesions in distinct zones (upper/lower x left/right)
and of distinct sizes. The text picks the target: one zone ("upper left lung"), one side ("left
lung"), the largest or smallest lesion, or all of them. An image-only model can at best guess, so a
model that reads the text wins, and ``test/dice_swapped_text`` falls when the text is swapped.

Each kind is worded in several ways (templates with the clauses in different orders, synonyms for the
lesion, the lung and the size), and each sample also carries its kind (``category``) and the target's
key words alone (``text_short``), for the alternative-text and per-category Dice of ``langseg test``.

Sides follow the radiological convention of a chest X-ray shown in PA view: the patient's *left* is
on the *right* of the image. A horizontal flip therefore changes the meaning of the text.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from langseg.errors import ConfigError
from langseg.files import atomic_write, atomic_write_text

ZONES = ("upper right", "upper left", "lower right", "lower left")  # patient's sides; image left = patient right
NUMBERS = {1: "one", 2: "two", 3: "three"}


@dataclass
class ReferringSample:
    image: np.ndarray  # (S, S) float32 in [0, 1]
    mask: np.ndarray  # (S, S) uint8 in {0, 1}
    text: str
    category: str  # the kind of reference: zone, side, all or size
    text_short: str  # the target's key words only ("upper left lung", "largest lesion"): still sufficient


def _zone_centre(zone: str, size: int, rng: np.random.Generator) -> tuple[float, float]:
    vertical, side = zone.split()
    row = 0.33 if vertical == "upper" else 0.66
    col = 0.28 if side == "right" else 0.72  # patient's right lung is on the image's left
    jitter = rng.uniform(-0.05, 0.05, size=2)
    return (row + jitter[0]) * size, (col + jitter[1]) * size


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


NOUN_PLURALS = {"infected area": "infected areas", "lesion": "lesions", "opacity": "opacities",
                "consolidation": "consolidations"}
LUNG_WORDS = ("lung", "lung field")
SIZE_WORDS = {"largest": ("largest", "biggest"), "smallest": ("smallest", "tiniest")}
BOTH_SIDES = ("bilateral pulmonary infection", "infection of both lungs")
# Several phrasings per kind, with the clauses in different orders; the first is the canonical wording.
# Every wording stays within 16 tokens of the packaged MiniLM tokenizer (configs/lvit.yaml keeps 16).
TEMPLATES = {
    "zone": ("One {noun} in the {zone} {lung}.", "{zone} {lung}: one {noun}.",
             "The {zone} {lung} shows one {noun}.", "A single {noun}, {zone} {lung}."),
    "side": ("Unilateral infection, {count}, {side} lung.", "{count} in the {side} {lung} only.",
             "{side} {lung} only: {count}.", "Infection of the {side} {lung} alone: {count}."),
    "all": ("All lesions: {where}, {count}.", "{count} in total: {where}.", "Every {noun}, {where}.",
            "{where}: all {count}."),
    "size": ("The {size} {noun}, in the {zone} {lung}.", "{zone} {lung}: the {size} {noun}.",
             "Only the {size} {noun} ({zone} {lung}).", "The {size} of the {nouns}, {zone} {lung}."),
}
CANONICAL_NOUN = {"zone": "infected area", "side": "infected area", "all": "infected area", "size": "lesion"}


@dataclass
class Reference:
    """What a text refers to: its kind (``category``), the lesions in the mask, the facts a wording
    states (zone, side, size, ...) and the terse key words (``text_short``)."""

    category: str
    chosen: list[Lesion]
    facts: dict[str, str]
    short: str


def _zone_reference(lesion: Lesion) -> Reference:
    return Reference("zone", [lesion], {"zone": lesion[0]}, f"{lesion[0]} lung")


def _side_reference(lesions: list[Lesion], side: str) -> Reference:
    chosen = [les for les in lesions if les[0].endswith(side)]
    return Reference("side", chosen, {"side": side}, f"{side} lung")


def _all_reference(lesions: list[Lesion]) -> Reference:
    sides = _sides(lesions)
    return Reference("all", lesions, {"side": sides[0] if len(sides) == 1 else ""}, "all lesions")


def _size_reference(lesions: list[Lesion], largest: bool) -> Reference:
    chosen = sorted(lesions, key=lambda les: les[1], reverse=largest)[0]
    size = "largest" if largest else "smallest"
    return Reference("size", [chosen], {"zone": chosen[0], "size": size}, f"{size} lesion")


def _count(n: int, noun: str) -> str:
    return f"{NUMBERS[n]} {noun if n == 1 else NOUN_PLURALS[noun]}"


def _wording(ref: Reference, rng: np.random.Generator | None) -> str:
    """The text of ``ref``: a template, noun, word for "lung" and size word drawn from ``rng``, or the
    canonical wording (each kind's first template and words) when ``rng`` is None."""
    picks = [0, 0, 0, 0] if rng is None else [int(k) for k in rng.integers(0, 4, size=4)]
    template = TEMPLATES[ref.category][picks[0]]
    noun = CANONICAL_NOUN[ref.category] if rng is None else list(NOUN_PLURALS)[picks[1]]
    lung = LUNG_WORDS[picks[2] % 2]
    side = ref.facts.get("side", "")
    both = BOTH_SIDES[picks[3] % 2]
    words = {
        "noun": noun, "nouns": NOUN_PLURALS[noun], "lung": lung, "zone": ref.facts.get("zone", ""), "side": side,
        "count": _count(len(ref.chosen), noun), "where": f"infection of the {side} lung" if side else both,
        "size": SIZE_WORDS[ref.facts["size"]][picks[3] % 2] if "size" in ref.facts else "",
    }
    text = template.format(**words)
    return text[0].upper() + text[1:]


def _sample(image: np.ndarray, ref: Reference, rng: np.random.Generator | None) -> ReferringSample:
    mask = np.zeros(image.shape, dtype=np.uint8)
    for _, _, blob in ref.chosen:
        mask[blob] = 1
    return ReferringSample(image=image, mask=mask, text=_wording(ref, rng), category=ref.category,
                           text_short=ref.short)


def make_referring_sample(size: int, rng: np.random.Generator,
                          wording: Literal["varied", "canonical"] = "varied") -> ReferringSample:
    """One image, mask and referring text drawn from ``rng``.

    The film, the kind of reference and the target are drawn from ``rng`` itself; the wording from a
    child generator (``rng.spawn``, which draws nothing from ``rng``), so the images and masks of a
    seed are those of the single-wording generator before it. ``wording="canonical"``: every text in its
    kind's first template and words (fixed word order, as in QaTa-COV19's structured texts).
    """
    if wording not in ("varied", "canonical"):
        raise ConfigError(f"wording must be 'varied' or 'canonical', got {wording!r}")
    wording_rng = rng.spawn(1)[0]
    image, lesions = _draw_film(size, rng)
    kind = rng.choice(["zone", "side", "all", "size"])
    if kind == "zone":
        ref = _zone_reference(lesions[int(rng.integers(len(lesions)))])
    elif kind == "side":
        ref = _side_reference(lesions, rng.choice(_sides(lesions)))
    elif kind == "all":
        ref = _all_reference(lesions)
    else:
        ref = _size_reference(lesions, largest=rng.random() < 0.5)
    return _sample(image, ref, wording_rng if wording == "varied" else None)


def referring_variants(size: int, rng: np.random.Generator) -> list[ReferringSample]:
    """Every reference of the image that ``make_referring_sample`` draws from the same ``rng`` state, each
    with its mask, in the canonical wording: one per zone, one per side, all lesions, the largest and the
    smallest."""
    image, lesions = _draw_film(size, rng)
    found = [_zone_reference(les) for les in lesions] + [_side_reference(lesions, side) for side in _sides(lesions)]
    found += [_all_reference(lesions), _size_reference(lesions, largest=True), _size_reference(lesions, largest=False)]
    return [_sample(image, ref, None) for ref in found]


def write_generic_split(root: str | Path, split: str, n: int, image_size: int, rng: np.random.Generator) -> Path:
    """``n`` samples drawn from ``rng`` as a split of a generic-format folder: ``root/{images,masks}/<split>_<k>.png``
    (8-bit gray, ``image_size``²; masks 0/255) and ``root/<split>.csv`` (``image,mask,text``); each file written
    atomically. Returns ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["image", "mask", "text"])
    for k in range(n):
        sample = make_referring_sample(image_size, rng)
        name = f"{split}_{k}.png"
        for folder, pixels in (("images", (sample.image * 255).astype(np.uint8)), ("masks", sample.mask * 255)):
            atomic_write(root / folder / name, lambda tmp, pixels=pixels: Image.fromarray(pixels).save(tmp, format="PNG"))
        writer.writerow([f"images/{name}", f"masks/{name}", sample.text])
    atomic_write_text(root / f"{split}.csv", table.getvalue())
    return root
