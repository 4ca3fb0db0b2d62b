"""A small synthetic dataset in the Decathlon layout, for demos and tests.

Each case is an "MRI" volume: an ellipsoidal body (zero outside, so cropping
matters) with smooth tissue texture, three kinds of deformed, randomly rotated
ellipsoidal blobs (bright/smooth, medium/smooth, between the two with a fine texture), Gaussian
noise and a smooth multiplicative bias field. Spacing is 1 x 1 x 2.5 mm and
the affine is LPS-like, so reorientation is exercised too.

``sparse=F`` mimics slice-wise annotation: in each training label only
``max(1, round(F * Z))`` of the Z slices along the last (file) axis, evenly spaced
with a random offset, keep their labels; every other voxel holds the ignore label
(value 4, declared ``"4": "ignore"`` in dataset.json). Images, the dense labels
under the ignore, and the held-out test cases (labelsTs, always dense) are the same
as without ``sparse`` for the same seed, so sparse and dense training compare on
the same cases.

``regions=True`` writes a BraTS-like dataset instead, in the nnU-Net v2 layout: four
channels (T1, T1ce, T2, FLAIR, ``{case}_000c.nii.gz``) of a 1 mm "brain" with one
tumour: oedema (label 1) around a core whose rim enhances (label 3) around a necrotic
centre (label 2). ``dataset.json`` declares the nested regions whole tumour [1, 2, 3] ⊃
tumour core [2, 3] ⊃ enhancing tumour [3] with ``regions_class_order`` [1, 2, 3]. No label
is visible in one channel alone: oedema in T2/FLAIR, enhancement in T1ce, necrosis as
bright T2 with dark T1ce.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from segkit.errors import ConfigError, DataError

SPACING = (1.0, 1.0, 2.5)
LABELS = {0: "background", 1: "bright", 2: "medium", 3: "textured"}
IGNORE = len(LABELS)  # nnU-Net v2: the ignore label is one above the last class
# Mean intensity and texture amplitude (std of smoothed noise) per class; 0 = body tissue.
# All classes are brighter than the tissue: a class between tissue and the zero outside
# the body is learnt far more slowly (low intensity reads as "background").
_TISSUE = {0: (60.0, 5.0), 1: (210.0, 6.0), 2: (110.0, 4.0), 3: (165.0, 20.0)}


def _odd(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo // 2, hi // 2 + 1)) * 2 + 1


def _smooth_noise(rng: np.random.Generator, shape: tuple, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = (_odd(rng, 49, 79), _odd(rng, 49, 79), _odd(rng, 35, 47))
    mm = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, SPACING)]
    coords = np.stack(np.meshgrid(*mm, indexing="ij"), axis=-1).astype(np.float32)
    half = np.array([(n - 1) / 2 * s for n, s in zip(shape, SPACING)])
    body_r = half * rng.uniform(0.85, 0.97, size=3)
    body = ((coords / body_r) ** 2).sum(-1) <= 1.0

    wobble = _smooth_noise(rng, shape, 3.0)
    label = np.zeros(shape, dtype=np.uint8)
    centres: list[np.ndarray] = []
    for cls in rng.permutation([1, 2, 3, *rng.choice([1, 2, 3], size=2, replace=False)]):
        radii = np.array([rng.uniform(8, 14), rng.uniform(8, 14), rng.uniform(10, 17)])
        for _ in range(30):  # keep blobs apart and inside the body
            centre = rng.uniform(-1, 1, size=3) * (body_r - radii - 3).clip(min=1) * 0.8
            if all(np.linalg.norm(centre - c) > 16 for c in centres):
                break
        centres.append(centre)
        local = (coords - centre) @ _random_rotation(rng).astype(np.float32)
        dist = np.sqrt(((local / radii) ** 2).sum(-1))
        label[(dist <= 1.0 + 0.2 * wobble) & body] = cls

    image = np.zeros(shape, dtype=np.float32)
    for cls, (mean, amp) in _TISSUE.items():
        sigma = 0.7 if cls == 3 else 2.0
        region = (label == cls) & body
        image[region] = (mean + amp * _smooth_noise(rng, shape, sigma))[region]
    grad = rng.uniform(-1, 1, size=3) / half
    bias = np.exp(0.1 * (coords @ grad.astype(np.float32)) + 0.05 * _smooth_noise(rng, shape, 10))
    image = image * bias + rng.normal(0, 5.0, size=shape).astype(np.float32)
    image[~body] = 0.0
    return image.astype(np.float32), label


def annotated_slices(depth: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``max(1, round(fraction * depth))`` annotated slices, evenly spaced."""
    count = min(depth, max(1, round(fraction * depth)))
    return np.floor((np.arange(count) + rng.uniform()) * depth / count).astype(int)


def _sparsify(label: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    out = np.full_like(label, IGNORE)
    keep = annotated_slices(label.shape[-1], fraction, rng)
    out[..., keep] = label[..., keep]
    return out


REGION_SPACING = (1.0, 1.0, 1.0)
REGION_CHANNELS = ("T1", "T1ce", "T2", "FLAIR")
REGION_LABELS = {
    "background": 0,
    "whole_tumor": [1, 2, 3],
    "tumor_core": [2, 3],
    "enhancing_tumor": [3],
}
REGION_ORDER = [1, 2, 3]
# Mean intensity per channel (T1, T1ce, T2, FLAIR) of brain tissue and labels 1-3.
_REGION_TISSUE = {
    0: (100.0, 100.0, 80.0, 80.0),
    1: (85.0, 95.0, 150.0, 170.0),  # oedema
    2: (60.0, 55.0, 190.0, 115.0),  # necrosis
    3: (95.0, 200.0, 120.0, 140.0),  # enhancing rim
}


def _blob(rng: np.random.Generator, coords: np.ndarray, centre, radii, wobble) -> np.ndarray:
    """Normalised distance to a deformed, rotated ellipsoid (<= 1 inside)."""
    local = (coords - np.asarray(centre, dtype=np.float32)) @ _random_rotation(rng).astype(
        np.float32
    )
    return np.sqrt(((local / np.asarray(radii, dtype=np.float32)) ** 2).sum(-1)) - 0.15 * wobble


def _region_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 4-channel brain-like volume with one tumour and its label map (values 0-3)."""
    shape = (_odd(rng, 41, 53), _odd(rng, 41, 53), _odd(rng, 33, 41))
    mm = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, REGION_SPACING)]
    coords = np.stack(np.meshgrid(*mm, indexing="ij"), axis=-1).astype(np.float32)
    half = np.array([(n - 1) / 2 * s for n, s in zip(shape, REGION_SPACING)])
    brain_r = half * rng.uniform(0.85, 0.95, size=3)
    brain = ((coords / brain_r) ** 2).sum(-1) <= 1.0
    wobble = _smooth_noise(rng, shape, 2.5)
    whole_r = rng.uniform(8.0, 12.0, size=3)
    centre = rng.uniform(-1, 1, size=3) * (brain_r - whole_r - 3).clip(min=1) * 0.6
    whole = _blob(rng, coords, centre, whole_r, wobble) <= 1.0
    core_r = whole_r * rng.uniform(0.6, 0.7)
    core_centre = centre + rng.uniform(-0.2, 0.2, size=3) * whole_r
    core_dist = _blob(rng, coords, core_centre, core_r, wobble)
    core = (core_dist <= 1.0) & whole
    necrosis = (core_dist <= rng.uniform(0.6, 0.7)) & core
    label = np.zeros(shape, dtype=np.uint8)
    label[whole & brain] = 1
    label[core & brain] = 3
    label[necrosis & brain] = 2

    channels = []
    for c in range(len(REGION_CHANNELS)):
        texture = _smooth_noise(rng, shape, 1.5)
        image = np.zeros(shape, dtype=np.float32)
        for value, means in _REGION_TISSUE.items():
            inside = label == value
            image[inside] = means[c] + 6.0 * texture[inside]
        bias = np.exp(0.08 * _smooth_noise(rng, shape, 8.0))
        image = image * bias + rng.normal(0, 6.0, size=shape).astype(np.float32)
        image[~brain] = 0.0
        channels.append(image.astype(np.float32))
    return np.stack(channels), label


def _write_region_demo(tmp: Path, num_cases: int, seed: int) -> None:
    """The BraTS-like region dataset (nnU-Net v2 layout) into ``tmp``."""
    rng = np.random.default_rng((seed, 16))
    affine = np.diag([*REGION_SPACING, 1.0])
    for i in range(num_cases + 3):
        images, label = _region_case(rng)
        part = "Ts" if i >= num_cases else "Tr"
        case = f"brats_{i:03d}"
        for c, image in enumerate(images):
            _save(tmp / f"images{part}" / f"{case}_{c:04d}.nii.gz", image, affine, REGION_SPACING)
        _save(tmp / f"labels{part}" / f"{case}.nii.gz", label, affine, REGION_SPACING)
    meta = {
        "name": "SegkitRegionDemo",
        "description": "Synthetic BraTS-like tumours generated by segkit.data.make_demo",
        "channel_names": dict(enumerate(REGION_CHANNELS)),
        "labels": REGION_LABELS,
        "regions_class_order": REGION_ORDER,
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))


def _write_blob_demo(tmp: Path, num_cases: int, seed: int, sparse: float | None) -> None:
    """The blob dataset (Decathlon layout) into ``tmp``."""
    rng = np.random.default_rng(seed)
    training, test = [], []
    for i in range(num_cases + 3):
        is_test = i >= num_cases
        image, label = _case(rng)
        name = f"demo_{i:03d}.nii.gz"
        affine = _affine(image.shape)
        if is_test:
            # held-out cases: never trained or validated on; labelsTs lets
            # `segkit evaluate` score predictions of imagesTs
            _save(tmp / "imagesTs" / name, image, affine)
            _save(tmp / "labelsTs" / name, label, affine)
            test.append(f"./imagesTs/{name}")
            continue
        if sparse is not None:
            # its own stream: the cases are the same as the dense demo's
            label = _sparsify(label, float(sparse), np.random.default_rng((seed, i, 1)))
        _save(tmp / "imagesTr" / name, image, affine)
        _save(tmp / "labelsTr" / name, label, affine)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "SegkitDemo",
        "description": "Synthetic MRI-like blobs generated by segkit.data.make_demo",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {
            str(k): v for k, v in {**LABELS, **({IGNORE: "ignore"} if sparse else {})}.items()
        },
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))


def _affine(shape: tuple) -> np.ndarray:
    # LPS-like orientation (x, y flipped), as DICOM converters commonly write.
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = [shape[0] / 2, shape[1] / 2, -shape[2] * SPACING[2] / 2]
    return affine


def _save(path: Path, array: np.ndarray, affine: np.ndarray, spacing=SPACING) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_zooms(spacing)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def make_demo(
    root: Path = Path("data/demo"),
    *,
    num_cases: int = 12,
    seed: int = 0,
    sparse: float | None = None,
    regions: bool = False,
) -> Path:
    """Writes the synthetic demo dataset (Decathlon layout) unless it exists.

    Args:
        root: Target directory; created atomically (built in a temporary sibling,
            then renamed). Returned unchanged if it already holds a dataset.json.
        num_cases: Labelled training cases; 3 test cases are added (imagesTs/, with
            their labels in labelsTs/ for evaluating predictions, not listed in dataset.json).
        seed: Seed; the output is identical for identical arguments.
        sparse: Fraction in (0, 1] of slices (along the last axis) annotated in the
            training labels; the rest is the ignore label. None: dense labels.
        regions: Write the BraTS-like region dataset (4 channels, nested regions,
            nnU-Net v2 layout; see the module docstring) instead.

    Returns:
        `root`.

    Raises:
        DataError: `root` exists, is not empty and holds no dataset.json.
        ConfigError: `sparse` is not in (0, 1], or is combined with `regions`.
    """
    root = Path(root)
    if sparse is not None and not (isinstance(sparse, int | float) and 0 < sparse <= 1):
        raise ConfigError(
            f"make-demo sparse={sparse!r}: the annotated fraction of slices must be in (0, 1]. "
            "Fix: e.g. sparse=0.2 annotates one slice in five."
        )
    if sparse is not None and regions:
        raise ConfigError(
            "make-demo regions=true sparse=...: an ignore label is not supported with regions. "
            "Fix: drop sparse= (regions) or regions= (sparse classes)."
        )
    if (root / "dataset.json").is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(
            f"{root} exists but holds no dataset.json. Fix: choose another directory for "
            "the demo (data.root=...) or remove this one."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        if regions:
            _write_region_demo(tmp, num_cases, seed)
        else:
            _write_blob_demo(tmp, num_cases, seed, sparse)
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "dataset.json").is_file():  # not a concurrent make_demo
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root
