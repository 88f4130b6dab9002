import csv
import logging
import os
import pickle

import numpy as np
import torch
from PIL import Image

from langseg.data import ImageTextMaskDataModule
from torch.utils.data import DataLoader, Subset, default_collate

from langseg.data.cache import CachedImageDataset, collate, to_model_input
from langseg.data.datasets import ImageTextMaskDataset
from tests.conftest import write_generic_folder
from tests.test_cli import TINY
from tests.test_cli_faults import UNET, run_main, the_error


def _batch(dataset, indices):
    """The collated samples ``indices`` as a model sees them (cached integers scaled and normalised)."""
    return to_model_input(default_collate([dataset[i] for i in indices]), dataset.dataset.mean, dataset.dataset.std)


def assert_same_batch(got: dict, want: dict, atol: float = 0.0) -> None:
    """``got`` holds the keys of ``want`` in its order, each value equal (tensors within ``atol``)."""
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.allclose(got[key], value, atol=atol, rtol=0), key
        else:
            assert got[key] == value, key


def test_cached_samples_match_the_decoded_ones(generic_folder, tmp_path):
    table = generic_folder / "train.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0] + ",category", *(f"{line},kind{k % 3}" for k, line in enumerate(lines[1:]))]))
    plain = ImageTextMaskDataset(table, image_size=32, in_channels=3)
    cached = CachedImageDataset(plain, tmp_path / "cache")
    assert cached[0]["image"].dtype == torch.uint8 and cached[0]["mask"].dtype == torch.uint8
    indices = list(range(len(plain)))
    got, want = _batch(cached, indices), default_collate([plain[i] for i in indices])
    assert got.keys() == want.keys() and got["id"] == want["id"] and got["text"] == want["text"]
    assert cached.columns == plain.columns and cached.where_of(2) == plain.where_of(2)
    assert got["image"].shape == (8, 3, 32, 32) and torch.equal(got["mask"], want["mask"])
    assert torch.allclose(got["image"], want["image"], atol=0.5 / 255 / 0.25 + 1e-6)  # uint8: half a grey level
    order = [5, 1, 5]  # any order, repeats
    samples = cached.__getitems__(order)  # one indexed read per array, held collated
    batched = collate(samples)
    assert_same_batch(batched, default_collate([cached[i] for i in order]))
    assert len(samples) == 3 and all(sample.keys() == cached[5].keys() for sample in samples)
    assert_same_batch(default_collate(samples), batched)  # read as the list of samples __getitems__ returns
    loader = DataLoader(Subset(cached, [2, 4, 6]), batch_size=2)  # torch's own collate, through a Subset
    assert [batch["id"] for batch in loader] == [[want["id"][2], want["id"][4]], [want["id"][6]]]
    assert batched["image"].dtype == torch.uint8 and batched["columns"] == {"category": [
        plain.columns_of(i)["category"] for i in order]}
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


def test_cached_loaders_give_the_decoded_batches_read_in_the_training_process(tmp_path):
    """A cached split's loader (no worker process, batches collated by ``__getitems__``, the test split's wrapper
    sample by sample) gives the batches of the uncached loader (``num_workers`` processes), key by key; with a
    per-sample pipeline the cached split is read by ``num_workers`` processes."""
    data = write_generic_folder(tmp_path / "data", {"train": 4, "val": 6, "test": 5})
    options = {"image_size": 32, "batch_size": 4, "num_workers": 1}
    cached = ImageTextMaskDataModule(str(data), **options)
    plain = ImageTextMaskDataModule(str(data), cache=False, **options)
    for split in ("val", "test"):
        got, want = (getattr(dm, f"{split}_dataloader")() for dm in (cached, plain))
        assert (got.num_workers, want.num_workers) == (0, 1)
        batches = list(zip(got, want, strict=True))
        assert len(batches) == 2
        for got_batch, want_batch in batches:
            assert_same_batch(cached.on_after_batch_transfer(got_batch, 0), want_batch, atol=0.5 / 255 / 0.25 + 1e-6)
    for pipeline in ({"zoom": [0.9, 1.1]}, {"intensity": "zscore"}):
        assert ImageTextMaskDataModule(str(data), **options, **pipeline).train_dataloader().num_workers == 1


def test_lightning_advises_more_workers_only_to_a_loader_that_uses_them(tmp_path, monkeypatch, recwarn):
    """On a machine with cores to spare Lightning advises raising ``num_workers`` for a loader with fewer than 2:
    shown for an uncached split read without workers, not for a cached one (read in the training process)."""
    import lightning as L
    from lightning.pytorch.trainer.connectors import data_connector

    from langseg.models import UNetBaseline

    monkeypatch.setattr(data_connector, "suggested_max_num_workers", lambda devices: 8)
    data = write_generic_folder(tmp_path / "data", {"train": 4, "val": 2, "test": 2})
    advised = []
    for cache, workers in ((False, 0), (True, 2)):
        trainer = L.Trainer(max_steps=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        recwarn.clear()
        trainer.fit(UNetBaseline(decoder_channels=(16, 8, 8, 8, 8)),
                    ImageTextMaskDataModule(str(data), image_size=32, batch_size=4, num_workers=workers, cache=cache))
        advised.append(any("'train_dataloader' does not have many workers" in str(w.message) for w in recwarn))
    assert advised == [True, False]


def test_fit_through_the_cli_reads_the_cache_in_process_and_with_a_zoom_in_workers(tmp_path, capsys):
    """``langseg fit`` on cached data: the validation split read in the training process, the zoomed training
    split's collated batches sent by a worker; the run trains and validates every epoch."""
    data = write_generic_folder(tmp_path / "data", {"train": 6, "val": 4, "test": 2})
    code, _, err = run_main("fit", "--config", UNET, "--trainer.max_epochs", "2", "--trainer.enable_progress_bar",
                            "false", "--data", "langseg.data.ImageTextMaskDataModule", "--data.root", data,
                            "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "1",
                            "--data.cache", "true", "--data.zoom", "[0.9, 1.1]", "--data.zoom_p", "1.0",
                            "--trainer.default_root_dir", tmp_path / "runs", cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    (metrics,) = (tmp_path / "runs").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert [int(r["epoch"]) for r in rows if r.get("val/dice")] == [0, 1]
    assert all(0 <= float(r["val/dice"]) <= 1 for r in rows if r.get("val/dice"))
    assert len(list((data / ".langseg_cache").glob("train-*.images.npy"))) == 1


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
    assert_same_batch(collate(cached.__getitems__([3, 0])), default_collate([cached[3], cached[0]]))  # finished in the batch
    bicubic = CachedImageDataset(ImageTextMaskDataset(generic_folder / "train.csv", image_size=32, in_channels=3,
                                                      resize="bicubic"), tmp_path / "cache")
    assert bicubic.paths != cached.paths
