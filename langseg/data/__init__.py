"""Datasets and LightningDataModules for image-text-mask segmentation."""
from langseg.data.datamodules import ImageTextMaskDataModule, SegmentationDataModule, SyntheticReferringDataModule
from langseg.data.datasets import (ImageTextMaskDataset, SwappedTextDataset, SyntheticReferringDataset,
                                   derangement)
from langseg.data.lvit import LViTDataModule, convert_lvit, read_lvit_records

__all__ = ["ImageTextMaskDataModule", "ImageTextMaskDataset", "LViTDataModule", "convert_lvit", "read_lvit_records", "SegmentationDataModule", "SwappedTextDataset",
           "SyntheticReferringDataModule", "SyntheticReferringDataset", "derangement"]
