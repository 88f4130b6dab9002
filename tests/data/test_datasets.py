import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from langseg.data import (ImageTextMaskDataModule, ImageTextMaskDataset, SyntheticReferringDataModule,
                          SyntheticReferringDataset, derangement)
from langseg.data.synthetic import _draw_film, make_referring_sample, referring_variants
from langseg.data.transforms import normalize
from langseg.errors import ConfigError, DataError


def test_synthetic_is_deterministic_and_splits_differ():
    a = SyntheticReferringDataset(4, image_size=32, seed=3)[2]
    b = SyntheticReferringDataset(4, image_size=32, seed=3)[2]
    c = SyntheticReferringDataset(4, image_size=32, seed=3, split="val")[2]
    assert torch.equal(a["image"], b["image"]) and a["text"] == b["text"]
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (1, 32, 32) and a["mask"].shape == (1, 32, 32)


def test_synthetic_mask_follows_the_text():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        s = make_referring_sample(64, rng)
        if s.category in ("side", "zone"):
            cols = np.nonzero(s.mask)[1]
            side = "left" if "left" in s.text_short else "right"
            assert side in s.text.lower() and ("left" if side == "right" else "right") not in s.text.lower()
            assert (cols.mean() > 32) == (side == "left"), s.text  # patient's left is on the image's right
            checked += 1
    assert checked > 50


def test_synthetic_single_lesion_texts_leave_other_lesions_out_of_the_mask():
    rng = np.random.default_rng(1)
    single = partial = 0
    for _ in range(100):
        s = make_referring_sample(64, rng)
        if s.category in ("zone", "size"):
            single += 1
            partial += int((s.image > 0.62).sum() > s.mask.sum() + 8)
    assert single > 20 and partial == single


def _single_wording_sample(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """Image, mask and kind as the generator drew them before its texts varied: the same draws in the same order."""
    image, lesions = _draw_film(size, rng)
    kind = str(rng.choice(["zone", "side", "all", "size"]))
    if kind == "zone":
        chosen = [lesions[int(rng.integers(len(lesions)))]]
    elif kind == "side":
        side = rng.choice(sorted({zone.split()[1] for zone, _, _ in lesions}))
        chosen = [les for les in lesions if les[0].endswith(side)]
    elif kind == "all":
        chosen = lesions
    else:
        largest = rng.random() < 0.5
        chosen = [sorted(lesions, key=lambda les: les[1], reverse=largest)[0]]
    mask = np.zeros(image.shape, dtype=np.uint8)
    for _, _, blob in chosen:
        mask[blob] = 1
    return image, mask, kind


def test_varied_wording_keeps_every_image_mask_and_kind_of_a_seed():
    ds = SyntheticReferringDataset(40, image_size=48, seed=5, split="test")
    for index in range(40):
        image, mask, kind = _single_wording_sample(48, np.random.default_rng([5, 2, index]))
        item = ds[index]
        assert torch.equal(item["image"], normalize(torch.from_numpy(image)[None], (0.5,), (0.25,)))
        assert np.array_equal(item["mask"][0].numpy(), mask)
        assert item["columns"]["category"] == kind
    rng, expected_rng = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):  # one generator drawn from again and again: the wording takes nothing from it
        image, mask, _ = _single_wording_sample(32, expected_rng)
        s = make_referring_sample(32, rng)
        assert np.array_equal(s.image, image) and np.array_equal(s.mask, mask)


def test_synthetic_texts_vary_in_wording_and_are_deterministic():
    samples = [make_referring_sample(32, np.random.default_rng([0, 0, i])) for i in range(200)]
    again = [make_referring_sample(32, np.random.default_rng([0, 0, i])) for i in range(200)]
    assert [s.text for s in samples] == [s.text for s in again]
    for category in ("zone", "side", "all", "size"):
        texts = {s.text for s in samples if s.category == category}
        assert len({t.split()[0] for t in texts}) >= 3, category  # several templates: different first words
    words = " ".join(s.text.lower() for s in samples)
    assert all(w in words for w in ("opacit", "consolidation", "infected area", "lesion", "lung field", "biggest"))
    assert {s.text_short for s in samples if s.category == "all"} == {"all lesions"}
    assert all(s.text_short.split()[0] in s.text.lower() for s in samples if s.category in ("zone", "side"))


def test_canonical_wording_keeps_the_samples_and_gives_one_text_per_reference():
    varied = [make_referring_sample(32, np.random.default_rng([1, 0, i])) for i in range(120)]
    fixed = [make_referring_sample(32, np.random.default_rng([1, 0, i]), "canonical") for i in range(120)]
    for v, f in zip(varied, fixed):
        assert np.array_equal(v.image, f.image) and np.array_equal(v.mask, f.mask) and v.category == f.category
    for i, f in enumerate(fixed):  # the canonical wording of one of the image's references
        assert f.text in {r.text for r in referring_variants(32, np.random.default_rng([1, 0, i]))}
    assert len({f.text for f in fixed}) < len({v.text for v in varied}) / 2
    dm = SyntheticReferringDataModule(num_train=8, num_val=4, num_test=4, num_workers=0, wording="canonical")
    dm.setup("fit")
    assert dm.train_dataloader().dataset.text_of(0) == make_referring_sample(
        64, np.random.default_rng([0, 0, 0]), "canonical").text
    with pytest.raises(ConfigError, match="wording must be 'varied' or 'canonical'"):
        make_referring_sample(32, np.random.default_rng(0), "free")


def test_every_synthetic_wording_fits_the_shortest_text_length_of_a_quick_config():
    import yaml
    from transformers import AutoTokenizer

    from langseg.blocks.text_encoder import resolve_text_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_text_encoder_path("minilm"))
    configs = Path(__file__).resolve().parents[2] / "configs"
    shortest = min(yaml.safe_load(path.read_text())["model"]["init_args"].get("max_text_length", 32)
                   for path in configs.glob("*.yaml") if not path.stem.endswith("_paper"))
    texts = {make_referring_sample(16, np.random.default_rng([0, 0, i])).text for i in range(3000)}
    assert len(texts) > 500 and max(len(tokenizer(t)["input_ids"]) for t in texts) <= shortest


def test_referring_variants_are_every_text_of_the_sampled_film():
    for index in range(30):
        sample = make_referring_sample(64, np.random.default_rng([0, 2, index]))
        variants = referring_variants(64, np.random.default_rng([0, 2, index]))
        assert all(np.array_equal(v.image, sample.image) for v in variants)
        assert any(v.category == sample.category and np.array_equal(v.mask, sample.mask) for v in variants)
        lesions = sum(v.category == "zone" for v in variants)
        assert len(variants) == lesions + sum(v.category == "side" for v in variants) + 3
        assert all(v.text.startswith(("One infected area in the", "Unilateral infection,", "All lesions:", "The "))
                   for v in variants)  # the canonical wording, which the shipped demo model was trained on
        everything = next(v.mask for v in variants if v.category == "all")
        assert all((v.mask <= everything).all() and v.mask.any() for v in variants)


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 17):
        order = derangement(n, seed=n)
        assert sorted(order) == list(range(n)) and all(i != j for i, j in enumerate(order))


def test_generic_folder_loads(generic_folder):
    dm = ImageTextMaskDataModule(str(generic_folder), image_size=32, in_channels=3, batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0} and len(batch["text"]) == 4
    assert batch["orig_size"].tolist()[0] == [40, 40]
    dm.setup("test")
    item = dm.dataset("test")[0]
    assert item["swap_text"] != item["text"] or len({dm.dataset("test").dataset.text_of(i) for i in range(4)}) == 1


def _rewrite(folder, rows, header=("image", "mask", "text"), encoding="utf-8"):
    with (folder / "train.csv").open("w", newline="", encoding=encoding) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return folder / "train.csv"


def _rows(folder):
    with (folder / "train.csv").open(encoding="utf-8") as fh:
        return [list(r.values()) for r in csv.DictReader(fh)]


def test_missing_column_is_named(generic_folder):
    path = _rewrite(generic_folder, [r[:2] for r in _rows(generic_folder)], header=("image", "mask"))
    with pytest.raises(DataError, match=rf"{path}: missing column\(s\) text"):
        ImageTextMaskDataset(path)


def test_missing_image_names_row_and_file(generic_folder):
    rows = _rows(generic_folder)
    rows[1][0] = "images/ghost.png"
    path = _rewrite(generic_folder, rows)
    with pytest.raises(DataError, match=r"row 3: image file .*ghost.png' not found"):
        ImageTextMaskDataset(path)


def test_empty_text_and_duplicate_rows(generic_folder):
    rows = _rows(generic_folder)
    path = _rewrite(generic_folder, [rows[0], [rows[1][0], rows[1][1], "  "]])
    with pytest.raises(DataError, match=r"row 3: column 'text' is empty"):
        ImageTextMaskDataset(path)
    _rewrite(generic_folder, [rows[0], rows[1], rows[0]])
    with pytest.raises(DataError, match=r"row 4: duplicates row 2"):
        ImageTextMaskDataset(path)


def test_non_utf8_csv(generic_folder):
    rows = _rows(generic_folder)
    rows[0][2] = "lésion à gauche"
    path = _rewrite(generic_folder, rows, encoding="latin-1")
    with pytest.raises(DataError, match="not valid UTF-8"):
        ImageTextMaskDataset(path)


def test_unreadable_image_and_mask_of_another_size(generic_folder):
    (generic_folder / "images" / "train_0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"train_0.png: cannot read the image"):
        ImageTextMaskDataset(generic_folder / "train.csv")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(generic_folder / "images" / "train_0.png")
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(generic_folder / "masks" / "train_1.png")
    with pytest.raises(DataError, match=r"row 3: mask .*train_1.png' is 40x20 but its image is 40x40"):
        ImageTextMaskDataset(generic_folder / "train.csv")


def test_mask_with_more_than_two_levels(generic_folder):
    Image.fromarray(np.arange(40 * 40, dtype=np.uint8).reshape(40, 40) % 3).save(generic_folder / "masks" / "train_2.png")
    ds = ImageTextMaskDataset(generic_folder / "train.csv", image_size=32)
    with pytest.raises(DataError, match=r"train_2.png: mask has values \{0, 1, 2\}; expected two levels"):
        ds[2]


def test_sixteen_bit_and_rgba_images_are_read(generic_folder):
    Image.fromarray((np.ones((40, 40)) * 30000).astype(np.uint16)).save(generic_folder / "images" / "train_0.png")
    Image.fromarray(np.full((40, 40, 4), 200, np.uint8), mode="RGBA").save(generic_folder / "images" / "train_1.png")
    ds = ImageTextMaskDataset(generic_folder / "train.csv", image_size=16, mean=(0.0,), std=(1.0,))
    assert torch.allclose(ds[0]["image"], torch.tensor(30000 / 65535), atol=1e-3)
    assert torch.allclose(ds[1]["image"], torch.tensor(200 / 255), atol=1e-3)


def test_missing_root_and_empty_split(tmp_path, generic_folder):
    with pytest.raises(DataError, match="is not a folder"):
        ImageTextMaskDataModule(str(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(DataError, match="the val split is empty"):
        SyntheticReferringDataModule(num_train=2, num_val=0).setup("fit")


def _gray(size: int = 40) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return ((x * 5 + y * 2) % 256).astype(np.uint8)


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "YCbCr", "1", "I;16B", "I", "RGBX"])
def test_every_pil_mode_reads_as_it_looks(generic_folder, mode):
    """Each mode keeps its appearance: a CMYK JPEG (ink, not light) is not inverted, 16-bit big-endian is
    not byte-swapped, a palette image is not read as palette indices."""
    gray = _gray()
    source = Image.fromarray(gray).convert("RGB")
    if mode == "I;16B":
        img = Image.frombytes("I;16B", (40, 40), (gray.astype(">u2") * 257).tobytes())
    elif mode == "I":
        img = Image.fromarray(gray.astype(np.int32) * 257)
    elif mode == "1":
        gray = np.where(gray > 127, 255, 0).astype(np.uint8)
        img = Image.fromarray(gray).convert("1")
    else:
        img = source.convert(mode, palette=Image.Palette.ADAPTIVE) if mode == "P" else source.convert(mode)
    path = generic_folder / "images" / ("train_0.jpg" if mode == "CMYK" else "train_0.tiff")
    img.save(path, **({"quality": 95} if mode == "CMYK" else {}))
    rows = (generic_folder / "train.csv").read_text().replace("images/train_0.png", f"images/{path.name}")
    (generic_folder / "train.csv").write_text(rows)
    ds = ImageTextMaskDataset(generic_folder / "train.csv", image_size=40, mean=(0.0,), std=(1.0,))
    read = ds[0]["image"][0].numpy()
    assert np.corrcoef(read.ravel(), gray.ravel() / 255.0)[0, 1] > 0.98
    assert abs(read.mean() - gray.mean() / 255.0) < 0.03


def test_float_images_are_refused_by_mode(generic_folder):
    Image.fromarray(_gray().astype(np.float32)).save(generic_folder / "images" / "train_0.tiff")
    rows = (generic_folder / "train.csv").read_text().replace("images/train_0.png", "images/train_0.tiff")
    (generic_folder / "train.csv").write_text(rows)
    ds = ImageTextMaskDataset(generic_folder / "train.csv", image_size=16)
    with pytest.raises(DataError, match=r"train_0.tiff: image mode F is not supported; expected gray"):
        ds[0]


def test_decompression_bomb_is_refused_by_name(generic_folder, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x40 = 1600 pixels: more than twice the limit
    with pytest.raises(DataError, match=r"train_0.png: cannot read the image .*decompression bomb"):
        ImageTextMaskDataset(generic_folder / "train.csv", image_size=16)


def test_excel_csv_with_a_byte_order_mark_is_read(generic_folder):
    text = (generic_folder / "train.csv").read_text(encoding="utf-8")
    (generic_folder / "train.csv").write_text("\ufeff" + text, encoding="utf-8")
    assert len(ImageTextMaskDataset(generic_folder / "train.csv", image_size=16)) == 8


def test_prediction_ids_are_unique_even_ignoring_case(tmp_path):
    from langseg.data.datasets import assign_ids

    names = ["x.png", "x.png", "x_0.png", "X.jpg", "a/y.png", "b/y.png", "z.png"]
    rows = [{"image": tmp_path / n} for n in names]
    assign_ids(rows)
    ids = [r["id"] for r in rows]
    assert len({i.casefold() for i in ids}) == len(ids)
    assert ids[-1] == "z" and all(i.casefold().startswith(n.split("/")[-1][0].casefold()) for i, n in zip(ids, names))


def test_swapped_text_always_differs_and_a_single_text_split_warns(caplog):
    from langseg.data.datasets import SwappedTextDataset, swap_partners

    texts = ["a", "a", "a", "b", "b", "c", "a", "c", "c", "c"]
    for seed in range(20):
        partners = swap_partners(texts, seed)
        assert all(texts[p] != t for p, t in zip(partners, texts))
    dm = SyntheticReferringDataModule(num_test=256, image_size=32, num_workers=0)
    ds = dm.dataset("test")
    assert all(ds.dataset.text_of(i) != ds.dataset.text_of(ds.partner[i]) for i in range(len(ds)))

    class OneText(torch.utils.data.Dataset):
        source = "one.csv"

        def __len__(self):
            return 3

        def text_of(self, i):
            return "same"

    SwappedTextDataset(OneText(), source="one.csv")
    assert "one.csv: all 3 samples have the same text; the swapped-text Dice cannot measure" in caplog.text
