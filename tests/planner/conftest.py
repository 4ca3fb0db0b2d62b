"""Fixtures: small NIfTI datasets with known spacings and nonzero boxes, the planner's inputs."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


def write_dataset(
    root: Path,
    cases: Sequence[tuple[Sequence[int], Sequence[float], Sequence[tuple[int, int]] | None]],
    *,
    affine_axes: Sequence[int] = (0, 1, 2),
    num_classes: int = 2,
) -> Path:
    """A Decathlon-layout dataset; each case is (voxel shape, spacing, nonzero box or None).

    ``affine_axes[i]`` is the RAS axis of file axis ``i`` (a permuted, flipped affine), so the
    canonical shapes and spacings are the file's permuted back.
    """
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    training = []
    for n, (shape, spacing, box) in enumerate(cases):
        affine = np.zeros((4, 4))
        for i, a in enumerate(affine_axes):
            affine[a, i] = spacing[i] * (-1 if i == 1 else 1)
        affine[3, 3] = 1
        image = np.zeros(shape, np.float32)
        box = box or [(0, s) for s in shape]
        sl = tuple(slice(lo, hi) for lo, hi in box)
        image[sl] = rng.uniform(1, 2, [hi - lo for lo, hi in box])
        label = np.zeros(shape, np.uint8)
        centre = tuple(slice((lo + hi) // 2, (lo + hi) // 2 + 2) for lo, hi in box)
        label[centre] = 1
        name = f"case_{n:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "modality": {"0": "MRI"},
        "labels": {str(k): f"class{k}" for k in range(num_classes)},
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(cases, **kwargs) -> Path:
        return write_dataset(tmp_path / f"ds{next(counter)}", cases, **kwargs)

    return make
