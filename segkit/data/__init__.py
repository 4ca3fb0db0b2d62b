"""Data pipeline: NIfTI datasets, cached preprocessing, patches, augmentation.

The names below are imported on first use (PEP 562), so ``segkit.data.io`` (NIfTI
reading and writing) stays cheap for callers that never train; the DataModule pulls
in torch and Lightning only when asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BatchAugment": "segkit.data.augment",
    "CaseDataset": "segkit.data.sampling",
    "CaseFiles": "segkit.data.layouts",
    "Dataset": "segkit.data.layouts",
    "DatasetInfo": "segkit.data.layouts",
    "EpochSampler": "segkit.data.sampling",
    "IntensityStats": "segkit.data.preprocess",
    "PatchDataset": "segkit.data.sampling",
    "PreprocessedDataset": "segkit.data.cache",
    "Preprocessor": "segkit.data.preprocess",
    "SegDataModule": "segkit.data.datamodule",
    "make_demo": "segkit.data.demo",
    "preprocess_dataset": "segkit.data.cache",
    "read_dataset": "segkit.data.layouts",
    "read_dataset_info": "segkit.data.layouts",
    "read_nifti": "segkit.data.io",
    "write_nifti": "segkit.data.io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'segkit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
