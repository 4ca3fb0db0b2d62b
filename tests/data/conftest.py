"""Fixtures: tiny NIfTI datasets written into tmp_path (both layouts)."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

LPS_PERMUTED = np.array(
    [[0.0, -1.0, 0.0, 10.0], [-1.0, 0.0, 0.0, 20.0], [0.0, 0.0, 2.5, -5.0], [0, 0, 0, 1]]
)


def oblique_affine(spacing=(1.0, 1.2, 2.0), angle_deg: float = 12.0) -> np.ndarray:
    """A rotated (oblique), axis-permuted, flipped affine with the given zooms."""
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    perm = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm @ np.diag(spacing)
    affine[:3, 3] = [3.0, -7.0, 11.0]
    return affine


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Writes a NIfTI file (header zooms follow the affine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def blob_case(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    channels: int = 1,
    num_classes: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Image (X, Y, Z, C) with a zero margin and labels 0..num_classes-1 as boxes."""
    label = np.zeros(shape, np.uint8)
    image = np.zeros((*shape, channels), np.float32)
    inner = tuple(slice(1, n - 1) for n in shape)
    image[inner] = rng.normal(50, 5, size=image[inner].shape)
    for cls in range(1, num_classes):
        lo = [int(rng.integers(1, max(2, n // 2))) for n in shape]
        box = tuple(slice(a, min(n - 1, a + max(2, n // 3))) for a, n in zip(lo, shape))
        label[box] = cls
        image[box] += 40 * cls
    return image, label


def write_msd(
    root: Path,
    cases: list[tuple[np.ndarray, np.ndarray]],
    *,
    num_classes: int,
    affine: np.ndarray | None = None,
) -> Path:
    """Writes given (image, label) arrays as a one-channel Decathlon dataset."""
    training = []
    for i, (image, label) in enumerate(cases):
        save(root / "imagesTr" / f"c{i}.nii.gz", image.astype(np.float32), affine)
        save(root / "labelsTr" / f"c{i}.nii.gz", label.astype(np.uint8), affine)
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    meta = {
        "modality": {"0": "MRI"},
        "labels": {str(c): f"class{c}" for c in range(num_classes)},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def make_msd(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a Decathlon dataset; returns its root."""

    def make(
        *,
        name: str = "msd",
        shapes=((9, 11, 7), (13, 10, 5), (8, 7, 9)),
        channels: int = 1,
        affine: np.ndarray | None = None,
        modality: str = "MRI",
        num_classes: int = 3,
        suffix: str = ".nii.gz",
        seed: int = 0,
    ) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        aff = np.diag([1.0, 1.0, 2.5, 1.0]) if affine is None else affine
        training = []
        for i, shape in enumerate(shapes):
            image, label = blob_case(rng, shape, channels=channels, num_classes=num_classes)
            img = image if channels > 1 else image[..., 0]
            save(root / "imagesTr" / f"case_{i:02d}{suffix}", img, aff)
            save(root / "labelsTr" / f"case_{i:02d}{suffix}", label, aff)
            training.append(
                {
                    "image": f"./imagesTr/case_{i:02d}{suffix}",
                    "label": f"./labelsTr/case_{i:02d}{suffix}",
                }
            )
        meta = {
            "modality": {str(c): (modality if c == 0 else f"MR{c}") for c in range(channels)},
            "labels": {str(c): f"class{c}" for c in range(num_classes)},
            "numTraining": len(training),
            "training": training,
            "test": [],
        }
        (root / "dataset.json").write_text(json.dumps(meta))
        return root

    return make


@pytest.fixture
def make_nnunet(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing an nnU-Net v2 raw dataset; returns its root."""

    def make(
        *,
        shapes=((9, 11, 7), (10, 8, 5), (7, 9, 9)),
        channels: int = 2,
        affine: np.ndarray | None = None,
        ending: str = ".nii.gz",
        seed: int = 1,
    ) -> Path:
        root = tmp_path / "nnunet"
        rng = np.random.default_rng(seed)
        aff = np.diag([0.8, 0.8, 3.0, 1.0]) if affine is None else affine
        for i, shape in enumerate(shapes):
            image, label = blob_case(rng, shape, channels=channels)
            for c in range(channels):
                save(root / "imagesTr" / f"pt{i:03d}_{c:04d}{ending}", image[..., c], aff)
            save(root / "labelsTr" / f"pt{i:03d}{ending}", label, aff)
        for c in range(channels):
            save(root / "imagesTs" / f"new000_{c:04d}{ending}", image[..., c], aff)
        meta = {
            "channel_names": {str(c): ("CT" if c == 0 else "T2") for c in range(channels)},
            "labels": {"background": 0, "liver": 1, "tumour": 2},
            "numTraining": len(shapes),
            "file_ending": ending,
        }
        (root / "dataset.json").write_text(json.dumps(meta))
        return root

    return make


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A 5-case synthetic demo dataset shared by the session (read-only)."""
    from segkit.data import make_demo

    return make_demo(tmp_path_factory.mktemp("demo") / "demo", num_cases=5, seed=0)


def set_pixdim(path: Path, axis: int, value: float) -> Path:
    """Overwrites the stored voxel size of one axis in a NIfTI-1 header, bytes as written.

    nibabel rewrites pixdim from the affine when it saves, so a header whose spacing
    is zero, negative, NaN or disagrees with the affine has to be made by hand.
    """
    raw = bytearray(
        gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    )
    struct.pack_into("<f", raw, 76 + 4 * (axis + 1), value)  # pixdim[0] is qfac
    path.write_bytes(gzip.compress(bytes(raw)) if path.suffix == ".gz" else bytes(raw))
    return path
