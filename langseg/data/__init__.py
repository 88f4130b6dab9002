"""Datasets and LightningDataModules for image-text-mask segmentation."""
from langseg.data.datamodules import ImageTextMaskDataModule, SegmentationDataModule, SyntheticReferringDataModule
from langseg.data.datasets import (ImageTextMaskDataset, SwappedTextDataset, SyntheticReferringDataset,
                                   derangement)

__all__ = ["ImageTextMaskDataModule", "ImageTextMaskDataset", "SegmentationDataModule", "SwappedTextDataset",
           "SyntheticReferringDataModule", "SyntheticReferringDataset", "derangement"]
