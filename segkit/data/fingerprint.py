"""The dataset fingerprint: per-case spacing, shape after the nonzero crop, foreground
intensity statistics. The planner and preprocessing both read it; it is computed in one pass
over the cases.

It does not depend on any preprocessing setting (the planner chooses the target spacing from
it), so it is cached once per dataset content at ``<cache base>/fingerprint-<digest>.json``,
the digest covering dataset.json and the size and modification time of every listed file.
Axes are those of segkit's preprocessed arrays: canonical RAS (``axis_order: "RAS"``).
Preprocessing that needs only the spacings and finds no fingerprint reads the headers
(:func:`header_spacings`) rather than every voxel.

nnU-Net's ``dataset_fingerprint.json`` is read too (:func:`read_fingerprint`); its axes are
nnU-Net's array order, the reverse of the file's voxel axes, and are reversed back by default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation

from segkit.data.io import header_spacing, quiet_nibabel
from segkit.data.layouts import (
    CaseFiles,
    Dataset,
    dataset_json_path,
    load_dataset_json,
    read_dataset,
)
from segkit.data.preprocess import load_case, nonzero_box, resampled_shape
from segkit.errors import DataError
from segkit.fsio import read_json, save_json_atomic

log = logging.getLogger("segkit")

# 2: intensity statistics in float64 (as preprocessing's ``ct`` statistics always were).
FINGERPRINT_VERSION = 2
_INTENSITY_SAMPLES = 10_000


@dataclass(frozen=True)
class Fingerprint:
    """What the planner knows about a dataset.

    Attributes:
        spacings: Per case, voxel size in mm per axis.
        shapes_after_crop: Per case, voxels per axis after the nonzero crop.
        case_ids: Case identifiers, in the order of the lists above.
        num_channels: Input channels.
        num_classes: Classes including background.
        intensity: Per channel foreground statistics (nnU-Net's keys), or empty.
        axis_order: ``"RAS"`` for segkit's arrays; anything else names another order.
        source: Where it was read from (for messages).
    """

    spacings: tuple[tuple[float, ...], ...]
    shapes_after_crop: tuple[tuple[int, ...], ...]
    case_ids: tuple[str, ...]
    num_channels: int
    num_classes: int
    intensity: tuple[dict[str, float], ...] = field(default=())
    axis_order: str = "RAS"
    source: str = ""

    def __post_init__(self) -> None:
        if not self.spacings:
            raise DataError(f"{self.source or 'fingerprint'}: holds no cases.")
        if len(self.spacings) != len(self.shapes_after_crop):
            raise DataError(
                f"{self.source or 'fingerprint'}: {len(self.spacings)} spacings but "
                f"{len(self.shapes_after_crop)} shapes; one of each per case is needed."
            )
        for cid, sp in zip(self.case_ids, self.spacings):
            if len(sp) != 3 or min(sp) <= 0:
                raise DataError(
                    f"{self.source or 'fingerprint'}: case {cid} has spacing {list(sp)}; "
                    "expected 3 positive numbers (mm)."
                )

    @property
    def num_cases(self) -> int:
        return len(self.spacings)

    @property
    def median_spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.median(np.asarray(self.spacings), axis=0))

    def resampled_shapes(self, target_spacing: Sequence[float]) -> list[tuple[int, ...]]:
        """Every case's shape after resampling to ``target_spacing`` (as preprocessing does)."""
        return [
            resampled_shape(shape, sp, target_spacing)
            for shape, sp in zip(self.shapes_after_crop, self.spacings)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; a superset of nnU-Net's fingerprint keys (axes: ``axis_order``)."""
        shapes = np.asarray(self.shapes_after_crop, dtype=float)
        return {
            "version": FINGERPRINT_VERSION,
            "axis_order": self.axis_order,
            "case_ids": list(self.case_ids),
            "spacings": [list(s) for s in self.spacings],
            "shapes_after_crop": [list(s) for s in self.shapes_after_crop],
            "median_spacing": list(self.median_spacing),
            "median_shape_after_crop": np.median(shapes, axis=0).tolist(),
            "num_channels": self.num_channels,
            "num_classes": self.num_classes,
            "foreground_intensity_properties_per_channel": {
                str(i): dict(s) for i, s in enumerate(self.intensity)
            },
        }

    def clip_statistics(self) -> list[dict[str, float] | None]:
        """Per channel the ``ct`` normalisation's statistics (fields of
        :class:`~segkit.data.preprocess.IntensityStats`), None where the fingerprint has none."""
        out: list[dict[str, float] | None] = []
        for ch in range(self.num_channels):
            s = self.intensity[ch] if ch < len(self.intensity) else None
            keys = ("percentile_00_5", "percentile_99_5", "mean", "std")
            if s is None or any(k not in s for k in keys):
                out.append(None)
                continue
            lower, upper, mean, std = (float(s[k]) for k in keys)
            out.append({"lower": lower, "upper": upper, "mean": mean, "std": std})
        return out

    def to_nnunet(self) -> dict[str, Any]:
        """nnU-Net's ``dataset_fingerprint.json`` content (axes reversed to nnU-Net's order)."""
        d = self.to_dict()
        return {
            "foreground_intensity_properties_per_channel": d[
                "foreground_intensity_properties_per_channel"
            ],
            "median_relative_size_after_cropping": 1.0,
            "shapes_after_crop": [list(reversed(s)) for s in d["shapes_after_crop"]],
            "spacings": [list(reversed(s)) for s in d["spacings"]],
        }


def _intensity_stats(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        values = np.zeros(1)
    lo, med, hi = np.percentile(values, [0.5, 50, 99.5])
    return {
        "max": float(values.max()),
        "mean": float(values.mean()),
        "median": float(med),
        "min": float(values.min()),
        "percentile_00_5": float(lo),
        "percentile_99_5": float(hi),
        "std": float(values.std()),
    }


def _case_fingerprint(
    case: CaseFiles, num_channels: int, num_classes: int, ignore_label: int | None = None
) -> dict[str, Any]:
    # the ignore label is one value above the classes: a valid value in the files
    num_values = num_classes + (ignore_label is not None)
    image, label, affine, spacing = load_case(
        case.images, case.label, num_channels=num_channels, num_classes=num_values
    )
    box = nonzero_box(image)
    # Canonical (RAS) order, as the preprocessed arrays have it: file axis i → ornt[i, 0].
    ornt = io_orientation(affine)
    shape = [0] * 3
    ras_spacing = [0.0] * 3
    for src, (dst, _) in enumerate(ornt):
        shape[int(dst)] = int(box[src][1] - box[src][0])
        ras_spacing[int(dst)] = round(float(spacing[src]), 6)
    rng = np.random.default_rng(int(hashlib.md5(case.case_id.encode()).hexdigest()[:8], 16))
    mask = label > 0 if label is not None else np.zeros(image.shape[1:], bool)
    if label is not None and ignore_label is not None:
        mask &= label != ignore_label  # unannotated voxels are no foreground
    samples = []
    for channel in image:
        values = channel[mask]
        if values.size > _INTENSITY_SAMPLES:
            values = rng.choice(values, _INTENSITY_SAMPLES, replace=False)
        samples.append(values.astype(np.float32))
    return {"case_id": case.case_id, "spacing": ras_spacing, "shape": shape, "fg": samples}


def compute_dataset_fingerprint(
    dataset: Dataset, *, num_workers: int = 1, progress: bool = True
) -> Fingerprint:
    """Reads every training case once: spacing, shape after the nonzero crop, intensities.

    Args:
        dataset: The parsed dataset.
        num_workers: Processes (<= 1: in this process).
        progress: Show a progress bar.
    """
    from tqdm.auto import tqdm

    info = dataset.info
    jobs = [(c, info.num_channels, info.num_classes, info.ignore_label) for c in dataset.training]
    bar = tqdm(total=len(jobs), desc="fingerprint", disable=not progress, leave=False)
    if num_workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(_case_fingerprint(*job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            futures = [pool.submit(_case_fingerprint, *job) for job in jobs]
            results = []
            try:
                for fut in futures:
                    results.append(fut.result())
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()
    intensity = tuple(
        _intensity_stats(np.concatenate([r["fg"][ch] for r in results]))
        for ch in range(info.num_channels)
    )
    return Fingerprint(
        spacings=tuple(tuple(r["spacing"]) for r in results),
        shapes_after_crop=tuple(tuple(r["shape"]) for r in results),
        case_ids=tuple(r["case_id"] for r in results),
        num_channels=info.num_channels,
        num_classes=info.num_outputs,  # the network's outputs: one per region, if regions
        intensity=intensity,
        axis_order="RAS",
        source=str(dataset.root),
    )


def dataset_digest(root: Path, files: Sequence[Path]) -> str:
    """Digest of dataset.json and the size and modification time of ``files``."""
    digest = hashlib.sha256(dataset_json_path(root).read_bytes()).hexdigest()
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    payload = json.dumps(
        {"dataset_json": digest, "files": stats, "version": FINGERPRINT_VERSION}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def fingerprint_path(dataset: Dataset, cache_dir: Path | None = None) -> Path:
    """Where the fingerprint of ``dataset`` is cached (it need not exist yet)."""
    base = Path(cache_dir) if cache_dir is not None else Path(dataset.root) / "segkit_cache"
    files = [f for case in dataset.training for f in (*case.images, case.label) if f]
    return base / f"fingerprint-{dataset_digest(dataset.root, files)}.json"


def cached_fingerprint(dataset: Dataset, cache_dir: Path | None = None) -> Fingerprint | None:
    """The fingerprint of ``dataset`` saved under ``cache_dir``, or None (not computed yet, or
    unreadable, e.g. written by an older version)."""
    path = fingerprint_path(dataset, cache_dir)
    if not path.is_file():
        return None
    try:
        return fingerprint_from_dict(read_json(path), source=str(path))
    except (OSError, ValueError):  # DataError included: computed again
        return None


def save_fingerprint(fp: Fingerprint, dataset: Dataset, cache_dir: Path | None = None) -> Path:
    """Saves ``fp`` where :func:`cached_fingerprint` finds it; returns the file."""
    path = fingerprint_path(dataset, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json_atomic(path, fp.to_dict())
    return path


def load_dataset_fingerprint(
    root: Path,
    *,
    cache_dir: Path | None = None,
    num_workers: int = 1,
    progress: bool = True,
) -> Fingerprint:
    """The cached fingerprint of the dataset at ``root``, computed on first use.

    Raises:
        DataError: The dataset is missing or a case cannot be read (names the file).
    """
    dataset = read_dataset(Path(root))
    fp = cached_fingerprint(dataset, cache_dir)
    if fp is None:
        fp = compute_dataset_fingerprint(dataset, num_workers=num_workers, progress=progress)
        try:
            save_fingerprint(fp, dataset, cache_dir)
        except OSError as err:  # a cache is kept where it can be; the caller goes on
            log.warning("the fingerprint is not cached (%s)", err)
    return fp


def header_spacings(dataset: Dataset) -> list[list[float]]:
    """Every training case's spacing in canonical (RAS) order, from the headers alone.

    The same numbers as the fingerprint's spacings (both come from :func:`header_spacing` of
    the first image file), without reading a voxel: for preprocessing that needs nothing else.
    """
    return [_canonical_spacing(case) for case in dataset.training]


def _canonical_spacing(case: CaseFiles) -> list[float]:
    path = case.images[0]
    try:
        with quiet_nibabel():
            img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - any header failure is a data problem
        raise DataError(
            f"{path}: cannot read the NIfTI header ({err}). Fix: re-export it."
        ) from err
    # Same checks and rounding as read_nifti, so both give identical spacings.
    zooms = list(header_spacing(img, path))
    if len(zooms) < 3:
        raise DataError(
            f"{path}: is {len(zooms)}D; expected a 3D volume. Fix: store it as a 3D volume "
            "(a 2D slice needs a singleton third axis)."
        )
    ornt = io_orientation(img.affine)
    out = [0.0] * 3
    for src, (dst, _) in enumerate(ornt):
        out[int(dst)] = zooms[src]
    return out


def fingerprint_from_dict(
    data: dict[str, Any],
    *,
    source: str = "",
    num_classes: int | None = None,
    reverse_nnunet_axes: bool = True,
) -> Fingerprint:
    """A :class:`Fingerprint` from segkit's JSON or nnU-Net's ``dataset_fingerprint.json``.

    Args:
        data: The parsed JSON.
        source: Path, for messages.
        num_classes: Classes incl. background where the file does not say (nnU-Net's).
        reverse_nnunet_axes: nnU-Net stores axes reversed with respect to the images' voxel
            axes (SimpleITK order); reverse them back to segkit's order.
    """
    where = source or "fingerprint"
    fix = (
        "Fix: give the fingerprint as it was written (nnU-Net's dataset_fingerprint.json or "
        "segkit's fingerprint-*.json), unchanged."
    )
    if not isinstance(data, dict) or "spacings" not in data or "shapes_after_crop" not in data:
        raise DataError(
            f"{where}: needs 'spacings' and 'shapes_after_crop' (segkit's fingerprint or "
            f"nnU-Net's dataset_fingerprint.json). {fix}"
        )
    # whatever a changed or foreign file holds is refused by name, never a traceback
    try:
        spacings = [tuple(float(v) for v in s) for s in data["spacings"]]
        shapes = [tuple(int(round(float(v))) for v in s) for s in data["shapes_after_crop"]]
        intensity_raw = data.get("foreground_intensity_properties_per_channel") or {}
        intensity = tuple(
            {str(k): float(v) for k, v in intensity_raw[key].items()}
            for key in sorted(intensity_raw, key=int)
        )
        n = len(spacings)
        case_ids = tuple(str(c) for c in data.get("case_ids") or [f"case_{i}" for i in range(n)])
        num_channels = int(data.get("num_channels") or max(len(intensity), 1))
        num_classes = int(data.get("num_classes") or num_classes or 2)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
        raise DataError(f"{where}: not a fingerprint ({type(err).__name__}: {err}). {fix}") from err
    ndim = len(spacings[0]) if spacings else 0
    for i, (spacing, shape) in enumerate(zip(spacings, shapes)):
        if not (len(spacing) == len(shape) == ndim and all(0 < v < math.inf for v in spacing)):
            raise DataError(
                f"{where}: case {i} has spacing {list(spacing)} and shape {list(shape)}; every "
                f"case needs {ndim or 'two or three'} positive voxel sizes and sizes. {fix}"
            )
        if not 1 <= min(shape) <= max(shape) <= 2**31:
            raise DataError(f"{where}: case {i} has shape {list(shape)}. {fix}")
    if ndim not in (2, 3) or len(shapes) != n or len(case_ids) != n:
        raise DataError(
            f"{where}: {n} spacings of {ndim} axes, {len(shapes)} shapes, {len(case_ids)} "
            f"case ids; expected one 2D or 3D spacing and shape per case. {fix}"
        )
    if num_channels < 1 or num_classes < 1:
        raise DataError(f"{where}: {num_channels} channels, {num_classes} classes. {fix}")
    segkit_own = "axis_order" in data
    axis_order = str(data.get("axis_order", "nnU-Net"))
    if not segkit_own and reverse_nnunet_axes:
        spacings = [tuple(reversed(s)) for s in spacings]
        shapes = [tuple(reversed(s)) for s in shapes]
        axis_order = "nnU-Net, reversed"
    return Fingerprint(
        spacings=tuple(spacings),
        shapes_after_crop=tuple(shapes),
        case_ids=case_ids,
        num_channels=num_channels,
        num_classes=num_classes,
        intensity=intensity,
        axis_order=axis_order,
        source=source,
    )


def read_fingerprint(path: Path, *, reverse_nnunet_axes: bool = True) -> Fingerprint:
    """Reads a fingerprint file: segkit's, or nnU-Net's ``dataset_fingerprint.json``.

    For nnU-Net's file the number of classes comes from a ``dataset.json`` beside it
    (nnU-Net copies it into the preprocessed folder), else 2 is assumed.

    Raises:
        DataError: The file is missing or not a fingerprint.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such fingerprint file. Fix: give planner.fingerprint=PATH to a "
            "dataset_fingerprint.json (nnU-Net) or fingerprint-*.json (segkit)."
        )
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise DataError(
            f"{path}: cannot be read as JSON ({err}). Fix: give the fingerprint as it was "
            "written (nnU-Net's dataset_fingerprint.json or segkit's fingerprint-*.json)."
        ) from err
    num_classes = None
    if (path.parent / "dataset.json").is_file():
        labels = load_dataset_json(path.parent).get("labels")  # a broken one is named
        if isinstance(labels, dict):
            # nnU-Net's "ignore" label is not a class
            num_classes = len([k for k in labels if str(k).strip().lower() != "ignore"]) or None
    return fingerprint_from_dict(
        data, source=str(path), num_classes=num_classes, reverse_nnunet_axes=reverse_nnunet_axes
    )


__all__ = [
    "Fingerprint",
    "cached_fingerprint",
    "compute_dataset_fingerprint",
    "fingerprint_from_dict",
    "fingerprint_path",
    "header_spacings",
    "load_dataset_fingerprint",
    "read_fingerprint",
    "save_fingerprint",
]
