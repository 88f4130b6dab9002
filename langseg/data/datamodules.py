"""LightningDataModules: the generic image-text-mask folder format and the embedded synthetic default."""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from langseg.blocks.augmentation import JointAugmentation, random_zoom
from langseg.data.cache import CachedImageDataset, collate, to_model_input
from langseg.data.datasets import ImageTextMaskDataset, SwappedTextDataset, SyntheticReferringDataset
from langseg.data.transforms import INTENSITY_MODES, RESIZE_MODES, Intensity, Resize
from langseg.errors import ConfigError, DataError

Split = Literal["train", "val", "test"]


class ResumableSampler(DistributedSampler):
    """Shuffled order that depends only on ``(seed, epoch)``, and that can skip what a resumed epoch already saw.

    A ``DistributedSampler`` (one replica unless DDP is running), so Lightning keeps it rather than
    wrapping it; ``seed`` defaults to torch's initial seed (what ``seed_everything`` set). ``resume``
    is ``(epoch, samples_seen_per_replica)`` from a checkpoint: that epoch starts after those samples.
    """

    def __init__(self, dataset: Dataset, seed: int | None = None, resume: tuple[int, int] | None = None) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        super().__init__(dataset, num_replicas=None if distributed else 1, rank=None if distributed else 0,
                         shuffle=True, seed=torch.initial_seed() % 2**63 if seed is None else seed)
        self.resume = resume

    def __iter__(self):
        indices = list(super().__iter__())
        if self.resume is not None and self.resume[0] == self.epoch:
            indices = indices[self.resume[1]:]
        return iter(indices)


class SegmentationDataModule(L.LightningDataModule):
    """Shared loaders for image-text-mask data; subclasses implement ``build_dataset(split)``.

    The test split carries what ``langseg test``'s text-robustness protocols need (``SwappedTextDataset``):
    ``swap_text``; ``alt_texts``, the cells of ``alt_text_columns`` (None: every column named ``text_*``;
    ``[]``: none), each giving ``test/dice@<column>``; ``categories``, the cells of ``category_columns``
    (None: ``category`` when the data have it), each value's Dice in the test report.
    """

    mean: Sequence[float] = (0.5,)  # the normalisation of every dataset here unless a subclass sets its own
    std: Sequence[float] = (0.25,)
    resize: Resize = "bilinear"  # the input pipeline unless a subclass takes it as an option (pipeline_options)
    intensity: Intensity = "unit"
    zoom: tuple[float, float] | None = None
    zoom_p: float = 0.1

    def __init__(self, image_size: int = 224, in_channels: int = 1, batch_size: int = 16, num_workers: int = 2,
                 swap_seed: int = 0, predict_split: Split = "test", alt_text_columns: list[str] | None = None,
                 category_columns: list[str] | None = None) -> None:
        super().__init__()
        for name, value, least in (("image_size", image_size, 1), ("in_channels", in_channels, 1),
                                   ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"data.{name}={value!r}; expected an integer >= {least}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.swap_seed = swap_seed
        self.predict_split = predict_split
        self.alt_text_columns = alt_text_columns
        self.category_columns = category_columns
        self.datasets: dict[str, Dataset] = {}
        self._resume: tuple[int, int] | None = None

    def pipeline_options(self, resize: Resize, intensity: Intensity, zoom: Sequence[float] | None,
                         zoom_p: float) -> None:
        """Checks and sets the input pipeline: ``resize`` and ``intensity`` (every split and inference, see
        ``langseg.data.transforms``) and the training-only random zoom by a factor in ``zoom`` with probability
        ``zoom_p`` (``random_zoom``, bicubic with edge padding as MONAI's ``RandZoomd``)."""
        for name, value, choices in (("resize", resize, RESIZE_MODES), ("intensity", intensity, INTENSITY_MODES)):
            if value not in choices:
                raise ConfigError(f"data.{name}={value!r}; expected one of {', '.join(choices)}")
        if zoom is not None:
            if (isinstance(zoom, str) or not isinstance(zoom, Sequence) or len(zoom) != 2
                    or not all(isinstance(z, (int, float)) and not isinstance(z, bool) for z in zoom)
                    or not 0 < zoom[0] <= zoom[1]):
                raise ConfigError(f"data.zoom={zoom!r}; expected [min, max] with 0 < min <= max, e.g. [0.95, 1.2]")
            zoom = (float(zoom[0]), float(zoom[1]))
        if isinstance(zoom_p, bool) or not isinstance(zoom_p, (int, float)) or not 0 <= zoom_p <= 1:
            raise ConfigError(f"data.zoom_p={zoom_p!r}; expected a probability in [0, 1]")
        self.resize, self.intensity, self.zoom, self.zoom_p = resize, intensity, zoom, float(zoom_p)

    def train_augmentation(self) -> JointAugmentation | None:
        """The training split's joint image-mask augmentation: the random zoom when ``zoom`` is set."""
        if self.zoom is None:
            return None
        return random_zoom(*self.zoom, prob=self.zoom_p, resample="bicubic", padding_mode="border")

    def preprocessing(self) -> dict[str, Any]:
        """What a model needs to prepare a new image as these data are prepared (saved in its checkpoints)."""
        return {"image_size": self.image_size, "in_channels": self.in_channels, "mean": [float(m) for m in self.mean],
                "std": [float(s) for s in self.std], "resize": self.resize, "intensity": self.intensity}

    def state_dict(self) -> dict[str, int]:
        """Where training stands in its epoch, so that a resumed run skips the batches already seen."""
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "train_samples_seen": done * self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "epoch" in state:
            self._resume = (state["epoch"], state["train_samples_seen"])

    def build_dataset(self, split: Split) -> Dataset:
        raise NotImplementedError

    def dataset(self, split: Split) -> Dataset:
        """The dataset of ``split``, built once (test and predict with ``swap_text``)."""
        if split not in self.datasets:
            ds = self.build_dataset(split)
            if len(ds) == 0:
                raise DataError(f"the {split} split is empty; expected at least one sample")
            source = str(getattr(ds, "source", f"the {split} split"))
            self.datasets[split] = self._test_protocols(ds, source) if split == "test" else ds
        return self.datasets[split]

    def _test_protocols(self, dataset: Dataset, source: str) -> SwappedTextDataset:
        """The test split with its swapped texts, alternative texts and categories (columns chosen by the
        options, or by the default rule)."""
        columns = tuple(getattr(dataset, "columns", ()))
        alt = [c for c in columns if c.startswith("text_")] if self.alt_text_columns is None else self.alt_text_columns
        categories = [c for c in columns if c == "category"] if self.category_columns is None else self.category_columns
        return SwappedTextDataset(dataset, self.swap_seed, source, alt, categories)

    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": (self._predict_key(),)}[stage]
        for split in splits:
            self.dataset(split)

    def _loader(self, split: Split, name: str, train: bool = False) -> DataLoader:
        """The loader of ``split``, which Lightning calls ``name`` (e.g. ``predict_dataloader``)."""
        dataset = self.dataset(split)
        if train:
            sampler: Sampler[int] | None = ResumableSampler(dataset, resume=self._resume)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)  # each sample evaluated exactly once
        else:
            sampler = None
        workers = self.loader_workers(dataset)
        if workers < self.num_workers:
            # Lightning advises raising num_workers for a loader with fewer than 2, which this one does not use
            # (process-wide: a later loader of the same name in this process gets no such advice either)
            warnings.filterwarnings("ignore", message=re.escape(f"The '{name}' does not have many workers"),
                                    category=PossibleUserWarning,
                                    module=r"lightning\.pytorch\.trainer\.connectors\.data_connector")
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0, drop_last=False, collate_fn=collate)

    def loader_workers(self, dataset: Dataset) -> int:
        """The number of loader processes that read ``dataset``: ``num_workers``."""
        return self.num_workers

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", "train_dataloader", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", "val_dataloader")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", "test_dataloader")

    def _predict_key(self) -> str:
        return "predict" if getattr(self, "predict_csv", None) else self.predict_split

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._predict_key(), "predict_dataloader")


class ImageTextMaskDataModule(SegmentationDataModule):
    """A folder in the generic format: ``root/{train,val,test}.csv`` with columns ``image,mask,text``.

    Paths in a CSV are relative to it; images PNG/JPEG (8/16-bit, gray or RGB), masks two-level
    (0 and 1 or 255). Images are resized to ``image_size`` and converted to ``in_channels``.
    ``predict_csv`` (relative to ``root``) names new images to predict: columns ``image,text``, ``mask``
    optional (when present, overlays outline it). Other columns are carried to every sample
    (``columns``), to the test report and to the predictions' ``predictions.csv``; ``alt_text_columns``
    and ``category_columns`` choose which drive the test protocols (see ``SegmentationDataModule``).

    The input pipeline (``pipeline_options``): ``resize`` (``bilinear`` antialiased, or ``bicubic``), then for
    training only a random zoom by a factor in ``zoom`` with probability ``zoom_p``, then ``intensity``: ``unit``
    (``(x - mean) / std`` of the [0, 1] image), ``zscore`` (per image and channel) or ``histogram``
    (equalised onto 0-255). The defaults are langseg's pipeline; the official HiMix code is ``bicubic``,
    ``zscore``, zoom ``[0.95, 1.2]`` at 0.1, GuideDecoder's the same with ``histogram``.

    ``cache`` (default) decodes and resizes the train, val and test images once into memory-mapped arrays in
    ``cache_dir`` (default ``<root>/.langseg_cache``; rebuilt when a source file, ``image_size``, ``in_channels``
    or ``resize`` changes: ``langseg.data.cache.CachedImageDataset``); False decodes every image every epoch.
    ``num_workers`` loader processes decode the images (building the cache, every epoch without it) and finish
    the samples of a per-sample pipeline (zoom, ``zscore``, ``histogram``); a cached split without one is read in
    the training process (``loader_workers``).
    """

    def __init__(self, root: str, image_size: int = 224, in_channels: int = 1, batch_size: int = 16,
                 num_workers: int = 2, train_csv: str = "train.csv", val_csv: str = "val.csv",
                 test_csv: str = "test.csv", mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.25,),
                 swap_seed: int = 0, predict_split: Split = "test", predict_csv: str | None = None,
                 resize: Resize = "bilinear", intensity: Intensity = "unit", zoom: tuple[float, float] | None = None,
                 zoom_p: float = 0.1, alt_text_columns: list[str] | None = None,
                 category_columns: list[str] | None = None, cache: bool = True, cache_dir: str | None = None) -> None:
        super().__init__(image_size, in_channels, batch_size, num_workers, swap_seed, predict_split,
                         alt_text_columns, category_columns)
        self.save_hyperparameters()
        self.pipeline_options(resize, intensity, zoom, zoom_p)
        self.predict_csv = predict_csv
        self.root = Path(root).expanduser()
        self.cache = cache
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else self.root / ".langseg_cache"
        self.csv_files = {"train": train_csv, "val": val_csv, "test": test_csv}
        self.mean, self.std = mean, std

    def build_dataset(self, split: Split) -> Dataset:
        if not self.root.is_dir():  # checked when data are needed: building a model from the config needs none
            raise DataError(f"data root '{self.root}' is not a folder; expected a folder holding "
                            f"{', '.join(self.csv_files.values())}")
        pipeline = {"resize": self.resize, "intensity": self.intensity}
        if split == "predict":
            return ImageTextMaskDataset(self.root / self.predict_csv, self.image_size, self.in_channels, self.mean,
                                        self.std, require_mask=False, **pipeline)
        dataset = ImageTextMaskDataset(self.root / self.csv_files[split], self.image_size, self.in_channels,
                                       self.mean, self.std, **pipeline,
                                       augmentation=self.train_augmentation() if split == "train" else None)
        return CachedImageDataset(dataset, self.cache_dir, self.num_workers) if self.cache else dataset

    def loader_workers(self, dataset: Dataset) -> int:
        """0 for a split read from the loader cache with nothing to compute per sample (no zoom, ``unit``
        intensity): its batch is one copy out of a memory map, made in the training process, where worker
        processes would add only the transfer of every batch between processes (docs/benchmarks.md measures
        both); ``num_workers`` otherwise."""
        cached = dataset.dataset if isinstance(dataset, SwappedTextDataset) else dataset  # the test split's wrapper
        if isinstance(cached, CachedImageDataset) and not cached.dataset.per_sample_pipeline:
            return 0
        return self.num_workers

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Scales and normalises the cached integer images of a batch on its device (``to_model_input``)."""
        return to_model_input(batch, self.mean, self.std) if isinstance(batch, dict) else batch


class SyntheticReferringDataModule(SegmentationDataModule):
    """Embedded default data: procedural referring-lesion images, generated on the fly, deterministic by seed,
    with the columns ``category`` and ``text_short`` (so ``langseg test`` reports ``test/dice@text_short``
    and the Dice per category by default). ``wording``: the texts' varied phrasings (default) or each reference's
    canonical one, with the same images and masks."""

    def __init__(self, num_train: int = 1024, num_val: int = 128, num_test: int = 256, image_size: int = 64,
                 in_channels: int = 1, batch_size: int = 32, num_workers: int = 2, seed: int = 0,
                 swap_seed: int = 0, predict_split: Split = "test", alt_text_columns: list[str] | None = None,
                 category_columns: list[str] | None = None, wording: Literal["varied", "canonical"] = "varied") -> None:
        super().__init__(image_size, in_channels, batch_size, num_workers, swap_seed, predict_split,
                         alt_text_columns, category_columns)
        self.save_hyperparameters()
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed
        self.wording = wording

    def build_dataset(self, split: Split) -> Dataset:
        return SyntheticReferringDataset(self.sizes[split], self.image_size, self.in_channels, self.seed, split,
                                         wording=self.wording)
