"""Data pipeline: NIfTI datasets, cached preprocessing, patches, augmentation."""

from segkit.data.augment import BatchAugment
from segkit.data.cache import PreprocessedDataset, preprocess_dataset
from segkit.data.datamodule import SegDataModule
from segkit.data.demo import make_demo
from segkit.data.io import read_nifti, write_nifti
from segkit.data.layouts import CaseFiles, Dataset, DatasetInfo, read_dataset, read_dataset_info
from segkit.data.preprocess import IntensityStats, Preprocessor
from segkit.data.sampling import CaseDataset, EpochSampler, PatchDataset

__all__ = [
    "BatchAugment",
    "CaseDataset",
    "CaseFiles",
    "Dataset",
    "DatasetInfo",
    "EpochSampler",
    "IntensityStats",
    "PatchDataset",
    "PreprocessedDataset",
    "Preprocessor",
    "SegDataModule",
    "make_demo",
    "preprocess_dataset",
    "read_dataset",
    "read_dataset_info",
    "read_nifti",
    "write_nifti",
]
