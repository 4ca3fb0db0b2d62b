"""Preprocessing: reorient, crop, resample, normalise — and its exact inverse.

A `Preprocessor` holds the resolved settings (target spacing, per-channel
normalisation with dataset statistics). It maps files to a canonical, cropped,
resampled, normalised array and records in a JSON-able ``props`` dict everything
needed to map a prediction back onto the original voxel grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

from segkit.data.io import NiftiVolume, read_nifti
from segkit.errors import ConfigError, DataError

NORMALIZATIONS = ("zscore", "ct", "none")
_RAS = axcodes2ornt("RAS")
_AFFINE_ATOL = 1e-3


@dataclass(frozen=True)
class IntensityStats:
    """Foreground intensity statistics of one channel over a dataset (for ``ct``).

    Attributes:
        lower: 0.5th percentile (clip floor).
        upper: 99.5th percentile (clip ceiling).
        mean: Mean of foreground intensities.
        std: Standard deviation of foreground intensities.
    """

    lower: float
    upper: float
    mean: float
    std: float


@dataclass(frozen=True)
class Preprocessor:
    """Resolved preprocessing settings; maps files to network input and back.

    Attributes:
        target_spacing: Voxel size (mm) after resampling, canonical RAS axis order.
        normalization: Per channel ``"zscore"``, ``"ct"`` or ``"none"``.
        intensity_stats: Per channel dataset statistics (required for ``"ct"``).
        num_channels: Expected input channels.
        num_classes: Classes incl. background (label values 0..num_classes-1).
        crop_nonzero: Crop to the bounding box of nonzero voxels.
        image_order: Spline order for image resampling (1 linear, 3 cubic).
    """

    target_spacing: tuple[float, ...]
    normalization: tuple[str, ...]
    num_channels: int
    num_classes: int
    intensity_stats: tuple[IntensityStats | None, ...] = field(default=())
    crop_nonzero: bool = True
    image_order: int = 3

    def __post_init__(self) -> None:
        if len(self.normalization) != self.num_channels:
            raise ConfigError(
                f"normalization has {len(self.normalization)} entries for "
                f"{self.num_channels} channels. Fix: give one scheme per channel."
            )
        for i, scheme in enumerate(self.normalization):
            if scheme not in NORMALIZATIONS:
                raise ConfigError(f"normalization[{i}]={scheme!r}; allowed: {NORMALIZATIONS}.")
            stats = self.intensity_stats[i] if i < len(self.intensity_stats) else None
            if scheme == "ct" and stats is None:
                raise ConfigError(f"channel {i} uses 'ct' normalisation but has no statistics.")
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ConfigError(
                f"target_spacing must be 3 positive numbers, got {self.target_spacing}."
            )

    def to_dict(self) -> dict[str, Any]:
        """Returns a plain dict (JSON / checkpoint safe)."""
        out = asdict(self)
        out["target_spacing"] = list(self.target_spacing)
        out["normalization"] = list(self.normalization)
        out["intensity_stats"] = [None if s is None else asdict(s) for s in self.intensity_stats]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        """Rebuilds a Preprocessor from `to_dict()` output."""
        data = dict(data)
        data["target_spacing"] = tuple(float(s) for s in data["target_spacing"])
        data["normalization"] = tuple(data["normalization"])
        data["intensity_stats"] = tuple(
            None if s is None else IntensityStats(**s) for s in data.get("intensity_stats", ())
        )
        return cls(**data)

    def preprocess_image(self, image_paths: Sequence[Path]) -> tuple[np.ndarray, dict[str, Any]]:
        """Preprocesses a new, unlabelled image.

        Args:
            image_paths: One multi-channel file (Decathlon) or one file per channel.

        Returns:
            ``(image, props)``: float32 ``(C, *S)`` and the dict `invert` needs.
        """
        image, _, props = self.preprocess_case(image_paths, None)
        return image, props

    def preprocess_case(
        self, image_paths: Sequence[Path], label_path: Path | None
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """Preprocesses an image and (optionally) its label map.

        Returns:
            ``(image (C, *S) float32, label (*S) uint8/int16 or None, props)``.
        """
        image, label, affine, spacing = load_case(
            image_paths, label_path, num_channels=self.num_channels, num_classes=self.num_classes
        )
        ornt = io_orientation(affine)
        canon = np.stack([apply_orientation(c, ornt) for c in image])
        canon_label = None if label is None else apply_orientation(label, ornt)
        canon_spacing = [0.0] * 3
        for src_axis, (dst_axis, _) in enumerate(ornt):
            canon_spacing[int(dst_axis)] = spacing[src_axis]

        box = nonzero_box(canon) if self.crop_nonzero else [(0, n) for n in canon.shape[1:]]
        sl = tuple(slice(lo, hi) for lo, hi in box)
        cropped = canon[(slice(None), *sl)]
        cropped_label = None if canon_label is None else canon_label[sl]

        normed = np.stack([self._normalize(c, i) for i, c in enumerate(cropped)]).astype(np.float32)
        new_shape = resampled_shape(cropped.shape[1:], canon_spacing, self.target_spacing)
        out = np.stack([resample(c, new_shape, order=self.image_order) for c in normed])
        out_label = None
        if cropped_label is not None:
            dtype = np.uint8 if self.num_classes <= 256 else np.int16
            out_label = resample(cropped_label.astype(dtype), new_shape, order=0)
        props = {
            "image_paths": [str(p) for p in image_paths],
            "original_shape": list(image.shape[1:]),
            "original_affine": affine.tolist(),
            "original_spacing": list(spacing),
            "orientation": ornt.astype(int).tolist(),
            "canonical_shape": list(canon.shape[1:]),
            "canonical_spacing": canon_spacing,
            "crop_box": [list(b) for b in box],
            "shape_after_crop": list(cropped.shape[1:]),
            "resampled_shape": list(new_shape),
        }
        return out.astype(np.float32, copy=False), out_label, props

    def _normalize(self, channel: np.ndarray, index: int) -> np.ndarray:
        scheme = self.normalization[index]
        if scheme == "none":
            return channel
        if scheme == "ct":
            stats = self.intensity_stats[index]
            clipped = np.clip(channel, stats.lower, stats.upper)
            return (clipped - stats.mean) / max(stats.std, 1e-8)
        return (channel - channel.mean()) / max(float(channel.std()), 1e-8)

    def invert(self, seg_or_probs: np.ndarray, props: dict[str, Any]) -> np.ndarray:
        """Maps a prediction on the preprocessed grid back to the original grid.

        Args:
            seg_or_probs: A label map ``(*S)`` (integer; resampled nearest) or class
                probabilities/logits ``(K, *S)`` (resampled linearly).
            props: The dict returned with the preprocessed image.

        Returns:
            A label map ``(*O)`` or ``(K, *O)`` array (channels first) on the
            original voxel grid; voxels outside the crop are background.
        """
        arr = np.asarray(seg_or_probs)
        is_probs = arr.ndim == 4
        expected = tuple(props["resampled_shape"])
        if tuple(arr.shape[-3:]) != expected or arr.ndim not in (3, 4):
            raise DataError(
                f"invert: got an array of shape {arr.shape}; expected {expected} or "
                f"(K, *{expected}) for image {props.get('image_paths')}. Fix: pass the "
                "prediction for the whole preprocessed case."
            )
        crop_shape = tuple(props["shape_after_crop"])
        canon_shape = tuple(props["canonical_shape"])
        sl = tuple(slice(lo, hi) for lo, hi in props["crop_box"])
        inv = ornt_transform(_RAS, np.asarray(props["orientation"], dtype=float))
        if is_probs:
            full = np.zeros((arr.shape[0], *canon_shape), dtype=np.float32)
            full[0] = 1.0  # outside the crop is certain background
            for k in range(arr.shape[0]):
                full[k][sl] = resample_rows(arr[k], crop_shape, order=1)
            out = np.stack([apply_orientation(c, inv) for c in full])
        else:
            full = np.zeros(canon_shape, dtype=arr.dtype)
            full[sl] = resample_rows(arr, crop_shape, order=0)
            out = apply_orientation(full, inv)
        out = np.ascontiguousarray(out)
        if tuple(out.shape[-3:]) != tuple(props["original_shape"]):
            raise DataError(f"invert produced {out.shape}, expected {props['original_shape']}.")
        return out


def _squeeze_trailing(data: np.ndarray, keep: int) -> np.ndarray:
    while data.ndim > keep and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _same_grid(a: NiftiVolume, b: NiftiVolume, shape_a: tuple, shape_b: tuple) -> None:
    if shape_a != shape_b:
        raise DataError(
            f"{b.path}: shape {shape_b} does not match {a.path} with shape {shape_a}. "
            "Fix: resample/crop both files to the same voxel grid."
        )
    if not np.allclose(a.affine, b.affine, atol=_AFFINE_ATOL):
        raise DataError(
            f"{b.path}: affine differs from {a.path}:\n{b.affine}\nvs\n{a.affine}\n"
            "Fix: write both with the same affine (e.g. copy the image header to the label)."
        )


def load_case(
    image_paths: Sequence[Path],
    label_path: Path | None,
    *,
    num_channels: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, tuple[float, float, float]]:
    """Reads and validates the files of one case.

    Returns:
        ``(image (C, X, Y, Z) float32, label (X, Y, Z) or None, affine, spacing)``
        in the file's own axis order.

    Raises:
        DataError: For any unreadable, mis-shaped, misaligned or invalid file.
    """
    vols = [read_nifti(Path(p), kind="image") for p in image_paths]
    first = vols[0]
    if len(vols) == 1:
        data = _squeeze_trailing(first.data, 4)
        if data.ndim == 3:
            data = data[None]
        elif data.ndim == 4:
            data = np.moveaxis(data, -1, 0)
        else:
            raise DataError(
                f"{first.path}: has {data.ndim} dimensions {first.data.shape}; expected a 3D "
                "volume (or 4D with channels last). Fix: convert 2D slices to a 3D volume "
                "with a singleton third axis."
            )
        if data.shape[0] != num_channels:
            raise DataError(
                f"{first.path}: holds {data.shape[0]} channel(s) but dataset.json declares "
                f"{num_channels}. Fix: correct 'modality'/'channel_names' or the file."
            )
    else:
        if len(vols) != num_channels:
            raise DataError(
                f"{first.path}: got {len(vols)} channel files, expected {num_channels}."
            )
        chans = []
        for v in vols:
            d = _squeeze_trailing(v.data, 3)
            if d.ndim != 3:
                raise DataError(
                    f"{v.path}: has shape {v.data.shape}; expected one 3D volume per channel "
                    "file. Fix: give each channel as a separate 3D file."
                )
            _same_grid(first, v, tuple(chans[0].shape) if chans else d.shape, d.shape)
            chans.append(d)
        data = np.stack(chans)
    spacing = tuple(float(s) for s in first.spacing[:3])
    if len(spacing) < 3:
        raise DataError(f"{first.path}: header has no spacing for 3 axes: {first.spacing}.")

    label = None
    if label_path is not None:
        lv = read_nifti(Path(label_path), kind="label")
        lab = _squeeze_trailing(lv.data, 3)
        if lab.ndim != 3:
            raise DataError(
                f"{lv.path}: label has shape {lv.data.shape}; expected 3D. Fix: store the "
                "label map as a 3D volume on the image grid."
            )
        _same_grid(first, lv, tuple(data.shape[1:]), tuple(lab.shape))
        label = validate_labels(lab, num_classes=num_classes, path=lv.path)
    return data, label, first.affine, spacing  # type: ignore[return-value]


def validate_labels(label: np.ndarray, *, num_classes: int, path: Path) -> np.ndarray:
    """Checks label values are integers in ``0..num_classes-1``; returns them as int16."""
    values = np.unique(label)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        bad = [float(v) for v in values if not np.isfinite(v) or v != np.round(v)][:5]
        raise DataError(
            f"{path}: label map holds non-integer values {bad}. Fix: store class indices "
            "(round or re-export the segmentation with nearest-neighbour interpolation)."
        )
    out = [int(v) for v in values if v < 0 or v >= num_classes]
    if out:
        raise DataError(
            f"{path}: label values {out[:10]} are outside the classes 0..{num_classes - 1} "
            "declared in dataset.json 'labels'. Fix: add them to 'labels' or remap the file."
        )
    return label.astype(np.int16)


def nonzero_box(image: np.ndarray) -> list[tuple[int, int]]:
    """Half-open bounding box of voxels nonzero in any channel of ``(C, *S)``."""
    mask = np.any(image != 0, axis=0)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append((int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, mask.shape[axis]))
    return box


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    """Shape after resampling from `spacing` to `target` (rounded, at least 1)."""
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True)
    )


def resample(array: np.ndarray, shape: Sequence[int], *, order: int) -> np.ndarray:
    """Resamples a 3D array to `shape`, aligning the outer voxel edges.

    Args:
        array: The volume.
        shape: Output shape.
        order: Spline order (0 nearest for labels, 1 linear, 3 cubic).
    """
    shape = tuple(int(s) for s in shape)
    if tuple(array.shape) == shape:
        return array.copy()
    scale = np.array(array.shape, dtype=float) / np.array(shape, dtype=float)
    # Voxel centres map as in = (out + 0.5) * scale - 0.5 (edge-aligned grids).
    return ndimage.affine_transform(
        array,
        scale,
        offset=0.5 * scale - 0.5,
        output_shape=shape,
        order=order,
        mode="nearest",
        prefilter=order > 1,
    )


def _taps(
    n_in: int, n_out: int, order: int, start: int = 0, stop: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Source indices ``(lo, hi)`` and the weight of ``hi`` for outputs ``start:stop`` of an
    axis resized from ``n_in`` to ``n_out`` voxels, outer edges aligned (weight None: nearest).

    Output voxel ``o``'s centre lies at source ``x = ((2o + 1)·n_in − n_out) / (2·n_out)``,
    computed from integers, so a voxel's taps do not depend on the slab it is computed in.
    """
    o = np.arange(start, n_out if stop is None else stop)
    if order == 0:  # the nearest centre, floor(x + 0.5); a tie takes the higher index
        lo = np.minimum((2 * o + 1) * n_in // (2 * n_out), n_in - 1)
        return lo, lo, None
    x = np.clip(((2 * o + 1) * n_in - n_out) / (2 * n_out), 0, n_in - 1)
    lo = np.floor(x).astype(np.intp)
    return lo, np.minimum(lo + 1, n_in - 1), (x - lo).astype(np.float32)


def _resize_axis(
    block: np.ndarray, axis: int, lo: np.ndarray, hi: np.ndarray, w: np.ndarray | None
) -> np.ndarray:
    low = np.take(block, lo, axis)
    if w is None:
        return low
    out = np.take(block, hi, axis)  # low + w·(high − low), in place: two arrays at a time
    out -= low
    out *= w.reshape([-1 if a == axis else 1 for a in range(block.ndim)])
    out += low
    return out


def resample_rows(
    source: np.ndarray, shape: Sequence[int], rows: tuple[int, int] | None = None, *, order: int
) -> np.ndarray:
    """Rows ``rows`` (first axis; None: all) of ``source`` resampled to ``shape``.

    The inverse resampling, whole or slab by slab: grids aligned at the outer voxel edges as in
    `resample`, clamped at the borders. Only the rows of ``source`` that the slab's voxels
    interpolate from are read (a memmap stays on disk), and a slab equals the same rows of the
    whole, bit for bit.

    Args:
        source: A 3D array on the preprocessed grid (an ``np.memmap`` is read in part).
        shape: The whole output's shape.
        rows: ``(start, stop)`` along the first axis of the output.
        order: 0 nearest (labels, dtype kept) or 1 linear (probabilities, float32).
    """
    if order not in (0, 1):
        raise ValueError(f"resample_rows: order={order}; allowed: 0 (nearest), 1 (linear).")
    shape = tuple(int(s) for s in shape)
    start, stop = rows or (0, shape[0])
    lo, hi, w = _taps(source.shape[0], shape[0], order, start, stop)
    first = int(lo[0])
    block = np.asarray(source[first : int(hi[-1]) + 1])
    if order == 1:
        block = block.astype(np.float32, copy=False)
    out = _resize_axis(block, 0, lo - first, hi - first, w)
    for axis in (1, 2):
        if source.shape[axis] != shape[axis]:
            out = _resize_axis(out, axis, *_taps(source.shape[axis], shape[axis], order))
    return out
