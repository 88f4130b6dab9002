import logging
import os
import pickle

import numpy as np
import torch
from PIL import Image

from langseg.data import ImageTextMaskDataModule
from torch.utils.data import default_collate

from langseg.data.cache import CachedImageDataset, to_model_input
from langseg.data.datasets import ImageTextMaskDataset
from tests.conftest import write_generic_folder
from tests.test_cli import TINY
from tests.test_cli_faults import UNET, run_main, the_error


def _batch(dataset, indices):
    """The collated samples ``indices`` as a model sees them (cached integers scaled and normalised)."""
    return to_model_input(default_collate([dataset[i] for i in indices]), dataset.dataset.mean, dataset.dataset.std)


def test_cached_samples_match_the_decoded_ones(generic_folder, tmp_path):
    plain = ImageTextMaskDataset(generic_folder / "train.csv", image_size=32, in_channels=3)
    cached = CachedImageDataset(plain, tmp_path / "cache")
    assert cached[0]["image"].dtype == torch.uint8 and cached[0]["mask"].dtype == torch.uint8
    indices = list(range(len(plain)))
    got, want = _batch(cached, indices), default_collate([plain[i] for i in indices])
    assert got.keys() == want.keys() and got["id"] == want["id"] and got["text"] == want["text"]
    assert cached.columns == plain.columns and cached.where_of(2) == plain.where_of(2)
    assert got["image"].shape == (8, 3, 32, 32) and torch.equal(got["mask"], want["mask"])
    assert torch.allclose(got["image"], want["image"], atol=0.5 / 255 / 0.25 + 1e-6)  # uint8: half a grey level
    batched = default_collate(cached.__getitems__([5, 1, 5]))  # one indexed read, any order, repeats
    assert torch.equal(batched["image"][0], cached[5]["image"]) and batched["id"] == [want["id"][i] for i in (5, 1, 5)]
    assert {p.name.split(".")[1] for p in (tmp_path / "cache").iterdir()} == {"images", "masks"}
    state = pickle.loads(pickle.dumps(cached))  # what a loader worker receives: no copy of the arrays
    assert state._arrays is None and torch.equal(state[1]["image"], cached[1]["image"])


def test_cache_is_reused_and_rebuilt_when_a_source_or_the_size_changes(generic_folder, tmp_path, caplog):
    def build(size=32):
        with caplog.at_level(logging.INFO, logger="langseg"):
            caplog.clear()
            ds = CachedImageDataset(ImageTextMaskDataset(generic_folder / "train.csv", image_size=size),
                                    tmp_path / "cache")
        return ds, "decoding 8 images once" in caplog.text

    first, built = build()
    assert built
    again, built = build()
    assert not built and again.paths == first.paths
    image = generic_folder / "images" / "train_2.png"
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)
    os.utime(image, ns=(1, 1))  # a new file, even one with an old date and the same size
    old_pixels = _batch(first, [2])["image"][0]
    changed, built = build()
    assert built and changed.paths != first.paths and not first.paths["images"].exists()
    decoded = ImageTextMaskDataset(generic_folder / "train.csv", image_size=32)[2]["image"]
    assert torch.allclose(_batch(changed, [2])["image"][0], decoded, atol=0.5 / 255 / 0.25 + 1e-6)
    assert not torch.allclose(old_pixels, decoded, atol=0.1)
    resized, built = build(size=16)
    assert built and resized[0]["image"].shape[-1] == 16


def test_datamodule_caches_by_default_and_can_decode_every_epoch(tmp_path):
    data = write_generic_folder(tmp_path / "data", {"train": 4, "val": 2, "test": 2})
    dm = ImageTextMaskDataModule(str(data), image_size=32, num_workers=0)
    assert isinstance(dm.dataset("train"), CachedImageDataset) and (data / ".langseg_cache").is_dir()
    assert dm.dataset("test").dataset.source == data / "test.csv"  # the swapped-text wrapper sees the csv
    plain = ImageTextMaskDataModule(str(data), image_size=32, num_workers=0, cache=False, cache_dir=str(tmp_path / "x"))
    assert isinstance(plain.dataset("train"), ImageTextMaskDataset) and not (tmp_path / "x").exists()


def test_unwritable_cache_dir_is_one_line_through_the_cli(tmp_path, capsys):
    data = write_generic_folder(tmp_path / "data", {"train": 2, "val": 2, "test": 2})
    (tmp_path / "blocked").write_text("a file where the cache folder goes")
    line = the_error(*run_main("fit", "--config", UNET, *TINY, "--data", "langseg.data.ImageTextMaskDataModule",
                               "--data.root", data, "--data.image_size", "32", "--data.cache_dir",
                               tmp_path / "blocked" / "cache", cwd=tmp_path, capsys=capsys)[::2])
    assert f"data.cache_dir '{tmp_path / 'blocked' / 'cache'}' cannot be written" in line
    assert "--data.cache false" in line


def test_cache_follows_the_input_pipeline(generic_folder, tmp_path):
    """A per-image normalisation is applied to the cached pixels (floats, as without the cache), and a change of
    the resize method is a new cache."""
    plain = ImageTextMaskDataset(generic_folder / "train.csv", image_size=32, in_channels=3, intensity="zscore")
    cached = CachedImageDataset(plain, tmp_path / "cache")
    got, want = cached[3], plain[3]
    assert got["image"].is_floating_point() and got["mask"].is_floating_point()
    assert torch.equal(got["mask"], want["mask"])
    assert torch.allclose(got["image"], want["image"], atol=0.05)  # z-scores of pixels within half a grey level
    assert got["image"].mean(dim=(1, 2)).abs().max() < 1e-4  # each channel z-scored
    bicubic = CachedImageDataset(ImageTextMaskDataset(generic_folder / "train.csv", image_size=32, in_channels=3,
                                                      resize="bicubic"), tmp_path / "cache")
    assert bicubic.paths != cached.paths
