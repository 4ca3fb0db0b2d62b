"""nnU-Net v2's preprocessing, reproduced: what ``DefaultPreprocessor.run_case`` does to a case.

A model trained by nnU-Net expects its input exactly as nnU-Net prepared its training data, so
segkit runs nnU-Net's steps, in nnU-Net's order and arithmetic, when it works from an nnU-Net
plans file (settings: :func:`segkit.planner.nnunet_plans.preprocessor_from_plans`):

1. read each channel file the way the plans' ``image_reader_writer`` does: the voxel axes
   reversed (SimpleITK's array order), after a reorientation to RAS for
   ``NibabelIOWithReorient``; intensities as float32;
2. ``transpose_forward`` (the coarsest axis first);
3. crop to the bounding box of the nonzero mask (nonzero in any channel, holes filled); the
   segmentation is -1 where it is 0 outside that mask;
4. normalise each channel in float32 (z-score, within the mask where ``use_mask_for_norm``;
   CT: clip to the foreground's 0.5/99.5 percentiles, then the foreground's mean and std);
5. resample to the target spacing with skimage's ``resize`` arithmetic (scipy's grid-mode
   zoom in float64, clipped to the input's range): cubic for images, per-label linear then the
   argmax for segmentations; when one axis is more than 3x coarser than the others, in-plane
   slice by slice and nearest neighbour along that axis ("separate z").

Arrays stay in nnU-Net's transposed order; nothing here reorients to segkit's RAS order, so
the output equals nnU-Net's array for array (tests/data/test_nnunet_preprocess.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

from segkit.errors import ConfigError, DataError

READERS = ("SimpleITKIO", "NibabelIO", "NibabelIOWithReorient")
NORMALIZATIONS = (
    "ZScoreNormalization",
    "CTNormalization",
    "NoNormalization",
    "RescaleTo01Normalization",
    "RGBTo01Normalization",
)
ANISO_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD
_EPS = 1e-8  # nnU-Net's normalisation epsilon for float32 output


@dataclass(frozen=True)
class Resampling:
    """One of nnU-Net's ``resampling_fn_*_kwargs``.

    Attributes:
        order: Spline order in-plane (or on all axes when not separate-z).
        order_z: Spline order along the coarse axis under separate-z resampling.
        force_separate_z: None decides by the spacing ratio; True/False forces it.
    """

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None


@dataclass(frozen=True)
class NnUNetPreprocessor:
    """nnU-Net's preprocessing settings of one configuration; maps files to network input.

    Attributes:
        reader: The plans' ``image_reader_writer`` (one of `READERS`).
        transpose_forward: The plans' axis permutation of the reader's array.
        target_spacing: The configuration's ``spacing``, transposed order (2 entries for a 2D
            configuration: the slice axis keeps its spacing).
        normalization: Per channel, an nnU-Net normalisation class name (`NORMALIZATIONS`).
        use_mask_for_norm: Per channel, z-score within the nonzero mask.
        intensity_properties: Per channel ``foreground_intensity_properties_per_channel``
            (``mean``, ``std``, ``percentile_00_5``, ``percentile_99_5``; for CT).
        data_resampling: ``resampling_fn_data_kwargs``.
        seg_resampling: ``resampling_fn_seg_kwargs``.
        probabilities_resampling: ``resampling_fn_probabilities_kwargs`` (the export).
    """

    reader: str
    transpose_forward: tuple[int, int, int]
    target_spacing: tuple[float, ...]
    normalization: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_properties: tuple[dict[str, float], ...] = field(default=())
    data_resampling: Resampling = field(default_factory=Resampling)
    seg_resampling: Resampling = field(default_factory=lambda: Resampling(order=1))
    probabilities_resampling: Resampling = field(default_factory=lambda: Resampling(order=1))

    def __post_init__(self) -> None:
        if self.reader not in READERS:
            raise ConfigError(
                f"image_reader_writer={self.reader!r}: segkit reproduces nnU-Net's NIfTI readers "
                f"{READERS}. Fix: a plans file of a NIfTI dataset."
            )
        if sorted(self.transpose_forward) != [0, 1, 2]:
            raise ConfigError(
                f"transpose_forward={list(self.transpose_forward)} is not a permutation of "
                "[0, 1, 2]. Fix: the plans file is damaged; re-plan with nnU-Net."
            )
        if len(self.use_mask_for_norm) != len(self.normalization):
            raise ConfigError(
                f"use_mask_for_norm has {len(self.use_mask_for_norm)} entries for "
                f"{len(self.normalization)} normalization_schemes. Fix: one per channel."
            )
        for c, scheme in enumerate(self.normalization):
            if scheme not in NORMALIZATIONS:
                raise ConfigError(
                    f"normalization_schemes[{c}]={scheme!r}: segkit reproduces {NORMALIZATIONS}."
                )
            if scheme == "CTNormalization":
                props = self.intensity_properties[c] if c < len(self.intensity_properties) else None
                missing = [
                    k
                    for k in ("mean", "std", "percentile_00_5", "percentile_99_5")
                    if not props or k not in props
                ]
                if missing:
                    raise ConfigError(
                        f"foreground_intensity_properties_per_channel['{c}'] lacks {missing}, "
                        "which CTNormalization needs. Fix: use the plans file nnU-Net wrote."
                    )
        if len(self.target_spacing) not in (2, 3) or min(self.target_spacing) <= 0:
            raise ConfigError(
                f"spacing={list(self.target_spacing)}: expected 2 or 3 positive numbers."
            )

    @property
    def num_channels(self) -> int:
        """Input channels (one normalisation scheme each)."""
        return len(self.normalization)

    def read(self, paths: Sequence[Path]) -> tuple[np.ndarray, dict[str, Any]]:
        """One case's files as nnU-Net's reader returns them.

        Returns:
            ``(array (C, *S) float32, props)``: the reader's axis order (the file's voxel axes
            reversed), and ``props["spacing"]`` in that order.
        """
        arrays, spacings, affines = [], [], []
        for path in paths:
            array, spacing, affine = _read_nifti(Path(path), reorient=self._reorient)
            if arrays and array.shape != arrays[0].shape:
                raise DataError(
                    f"{path}: shape {array.shape[::-1]} differs from {paths[0]} "
                    f"{arrays[0].shape[::-1]}. Fix: give every channel on one voxel grid."
                )
            if spacings and not np.allclose(spacing, spacings[0]):
                raise DataError(
                    f"{path}: spacing {spacing[::-1]} differs from {paths[0]} "
                    f"{spacings[0][::-1]}. Fix: give every channel on one voxel grid."
                )
            arrays.append(array)
            spacings.append(spacing)
            affines.append(affine)
        data = np.stack(arrays).astype(np.float32, copy=False)
        return data, {"spacing": spacings[0], "affine": affines[0].tolist()}

    @property
    def _reorient(self) -> bool:
        return self.reader == "NibabelIOWithReorient"

    def preprocess_case(
        self, image_paths: Sequence[Path], seg_path: Path | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``DefaultPreprocessor.run_case`` of one case.

        Args:
            image_paths: One file per channel (``{case}_{0000}.nii.gz``, ...).
            seg_path: The label map, or None (prediction).

        Returns:
            ``(data (C, *S) float32, seg (1, *S) int8/int16, props)`` in nnU-Net's transposed
            order; ``seg`` is -1 outside the nonzero mask (all of it when ``seg_path`` is None).
        """
        if len(image_paths) != self.num_channels:
            raise DataError(
                f"{image_paths[0] if image_paths else 'case'}: got {len(image_paths)} channel "
                f"file(s); the plans normalise {self.num_channels}. Fix: give one file per "
                "channel, named {case}_{0000}.nii.gz, {case}_{0001}.nii.gz, ..."
            )
        data, props = self.read(image_paths)
        seg = None
        if seg_path is not None:
            seg, _ = self.read([seg_path])
            if seg.shape[1:] != data.shape[1:]:
                raise DataError(
                    f"{seg_path}: shape {seg.shape[1:][::-1]} differs from the image's "
                    f"{data.shape[1:][::-1]}. Fix: store the label map on the image's grid."
                )
        data, seg, more = self.run_case_npy(data, seg, props["spacing"])
        props.update(more, image_paths=[str(p) for p in image_paths])
        return data, seg, props

    def run_case_npy(
        self, data: np.ndarray, seg: np.ndarray | None, spacing: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``DefaultPreprocessor.run_case_npy``: arrays in the reader's order to network input.

        Args:
            data: ``(C, *S)`` in the reader's axis order.
            seg: ``(1, *S)`` or None.
            spacing: The reader's spacing (same order as ``data``).
        """
        data = data.astype(np.float32)  # a copy: the caller's array is left alone
        seg = None if seg is None else np.array(seg, copy=True)
        axes = [0, *(a + 1 for a in self.transpose_forward)]
        data = data.transpose(axes)
        seg = None if seg is None else seg.transpose(axes)
        spacing_t = [float(spacing[a]) for a in self.transpose_forward]
        shape_before = tuple(int(n) for n in data.shape[1:])
        data, seg, bbox = crop_to_nonzero(data, seg)
        shape_after_crop = tuple(int(n) for n in data.shape[1:])
        target = list(self.target_spacing)
        if len(target) < data.ndim - 1:  # 2D: the slice axis keeps its spacing
            target = [spacing_t[0], *target]
        new_shape = compute_new_shape(data.shape[1:], spacing_t, target)
        # nnU-Net normalises before resampling, so the nonzero mask fits the image exactly
        for c in range(data.shape[0]):
            data[c] = self._normalize(data[c], seg[0], c)
        data = resample_data_or_seg(data, new_shape, spacing_t, target, self.data_resampling)
        seg = resample_data_or_seg(
            seg, new_shape, spacing_t, target, self.seg_resampling, is_seg=True
        )
        seg = seg.astype(np.int16 if np.max(seg) > 127 else np.int8)
        props = {
            "shape_before_cropping": list(shape_before),
            "bbox_used_for_cropping": [list(b) for b in bbox],
            "shape_after_cropping_and_before_resampling": list(shape_after_crop),
            "shape_after_resampling": [int(n) for n in data.shape[1:]],
            "spacing_transposed": spacing_t,
            "target_spacing": [float(t) for t in target],
            "transpose_forward": list(self.transpose_forward),
        }
        return data, seg, props

    def export(
        self,
        logits: np.ndarray,
        props: dict[str, Any],
        *,
        regions_class_order: Sequence[int] | None = None,
        return_probabilities: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """nnU-Net's export of a prediction onto the input's voxel grid.

        ``convert_predicted_logits_to_segmentation_with_correct_shape`` followed by the reader's
        ``write_seg``: the logits resampled to the cropped shape (linear; separate-z as in
        preprocessing, decided from the target and the original spacing), the labels (argmax,
        or each region's sigmoid > 0.5 in ``regions_class_order``), put back into the box, and
        transposed (and reoriented) back to the file's voxel order.

        Args:
            logits: ``(K, *S)`` on the preprocessed grid (nnU-Net's predictor hands float16).
            props: ``preprocess_case``'s props of the same case.
            regions_class_order: dataset.json's, for a region model (sigmoid outputs).
            return_probabilities: Also return the probabilities (softmax or sigmoid); outside
                the box, background is certain (softmax) or every region absent.

        Returns:
            The label map in the file's voxel order, uint8 (uint16 from 255 on), to be written
            with the input's affine and header (`segkit.data.io.write_nifti`); with
            ``return_probabilities``, also ``(K, *file shape)`` float32.
        """
        import torch

        logits = np.asarray(logits)
        expected = tuple(props["shape_after_resampling"])
        if logits.ndim != 4 or logits.shape[1:] != expected:
            raise DataError(
                f"export: logits of shape {logits.shape} for {props.get('image_paths')}; "
                f"expected (K, *{expected}), the preprocessed case's grid. Fix: pass the "
                "prediction of the whole case that preprocess_case returned with these props."
            )
        if regions_class_order is not None and len(regions_class_order) != logits.shape[0]:
            raise DataError(
                f"export: {logits.shape[0]} outputs but regions_class_order has "
                f"{len(regions_class_order)} entries. Fix: one entry per region output "
                "(dataset.json 'regions_class_order')."
            )
        if not return_probabilities:  # labels only: one class at a time
            return self.export_labels(
                lambda c: logits[c], logits.shape[0], props, regions_class_order
            )
        resampled = self._resample_logits(logits, props)
        probs = None
        if regions_class_order is not None or return_probabilities:
            nonlin = torch.sigmoid if regions_class_order is not None else _softmax0
            with torch.no_grad():
                probs = nonlin(torch.from_numpy(np.asarray(resampled)).float()).numpy()
        if regions_class_order is not None:
            labels = np.zeros(resampled.shape[1:], dtype=np.uint16)
            for i, c in enumerate(regions_class_order):
                labels[probs[i] > 0.5] = c
        else:
            labels = (resampled if probs is None else probs).argmax(0)
        full = self.place_labels(labels, props)
        if not return_probabilities:
            return full
        box = tuple(slice(lo, hi) for lo, hi in props["bbox_used_for_cropping"])
        out = np.zeros((probs.shape[0], *props["shape_before_cropping"]), dtype=probs.dtype)
        if regions_class_order is None:
            out[0] = 1
        out[(slice(None), *box)] = probs
        return full, np.stack([self._to_file_order(p, np.asarray(props["affine"])) for p in out])

    def _resample_logits(self, logits: np.ndarray, props: dict[str, Any]) -> np.ndarray:
        return resample_data_or_seg(
            logits,
            props["shape_after_cropping_and_before_resampling"],
            props["target_spacing"],
            props["spacing_transposed"],
            self.probabilities_resampling,
        )

    def export_labels(
        self,
        channel: Callable[[int], np.ndarray],
        channels: int,
        props: dict[str, Any],
        regions_class_order: Sequence[int] | None = None,
    ) -> np.ndarray:
        """:meth:`export`'s label map from logits handed out one output channel at a time.

        Each channel (``channel(c)``: ``(*S)`` on the preprocessed grid) is resampled on its
        own; the argmax is kept as a running maximum (the first of equal values wins, as
        ``argmax``), or each region's sigmoid > 0.5 is written in order. The same labels as
        resampling every channel at once, in the memory of two channels on the cropped grid;
        the logits themselves may live on disk (``segkit predict`` spills them there).
        """
        import torch

        expected = tuple(props["shape_after_resampling"])
        if regions_class_order is not None and len(regions_class_order) != channels:
            raise DataError(
                f"export: {channels} outputs but regions_class_order has "
                f"{len(regions_class_order)} entries. Fix: one entry per region output "
                "(dataset.json 'regions_class_order')."
            )
        regions = regions_class_order
        best = labels = None
        for c in range(channels):
            logits = np.asarray(channel(c))
            if logits.shape != expected:
                raise DataError(
                    f"export: channel {c} has shape {logits.shape}; expected {expected}, the "
                    "preprocessed case's grid. Fix: pass the prediction of the whole case."
                )
            value = self._resample_logits(logits[None], props)[0]
            if labels is None:
                labels = np.zeros(value.shape, dtype=np.uint16)
            if regions is not None:
                with torch.no_grad():
                    above = torch.sigmoid(torch.from_numpy(np.asarray(value)).float()) > 0.5
                labels[above.numpy()] = regions[c]
            elif best is None:
                best = np.array(value, copy=True)
            else:
                better = value > best
                labels[better] = c
                np.copyto(best, value, where=better)
        return self.place_labels(labels, props)

    def place_labels(self, labels: np.ndarray, props: dict[str, Any]) -> np.ndarray:
        """Labels on the cropped grid (before resampling) into the box, background around,
        in the file's voxel order: uint8 (uint16 from 255 on), as nnU-Net's writer stores them.
        """
        full = np.zeros(props["shape_before_cropping"], dtype=np.uint16)
        box = tuple(slice(lo, hi) for lo, hi in props["bbox_used_for_cropping"])
        full[box] = labels
        full = self._to_file_order(full, np.asarray(props["affine"]))
        return full.astype(np.uint8 if full.max() < 255 else np.uint16, copy=False)

    def _to_file_order(self, array: np.ndarray, affine: Any) -> np.ndarray:
        """An array in nnU-Net's transposed order back in the file's voxel order."""
        backward = [list(self.transpose_forward).index(a) for a in range(3)]
        array = array.transpose(backward).transpose(2, 1, 0)
        if self._reorient:  # from RAS back to the file's orientation, as the reader's writer
            ras = axcodes2ornt("RAS")
            array = apply_orientation(array, ornt_transform(ras, io_orientation(affine)))
        return np.ascontiguousarray(array)

    def _normalize(self, image: np.ndarray, seg: np.ndarray, c: int) -> np.ndarray:
        # nnU-Net's expressions, operation for operation: float32 throughout, so the result is
        # the same to the last bit, not merely close
        scheme = self.normalization[c]
        image = image.astype(np.float32, copy=False)
        if scheme == "ZScoreNormalization":
            if self.use_mask_for_norm[c]:
                mask = seg >= 0
                mean = image[mask].mean()
                std = image[mask].std()
                image[mask] = (image[mask] - mean) / max(std, _EPS)
            else:
                mean = image.mean()
                std = image.std()
                image -= mean
                image /= max(std, _EPS)
        elif scheme == "CTNormalization":
            props = self.intensity_properties[c]
            np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
            image -= props["mean"]
            image /= max(props["std"], _EPS)
        elif scheme == "RescaleTo01Normalization":
            image -= image.min()
            image /= np.clip(image.max(), a_min=_EPS, a_max=None)
        elif scheme == "RGBTo01Normalization":
            if image.min() < 0 or image.max() > 255:
                raise DataError(
                    f"channel {c}: RGBTo01Normalization expects values in 0..255, got "
                    f"{float(image.min())}..{float(image.max())}. Fix: the channel's name in "
                    "dataset.json 'channel_names' decides the scheme; correct it or the image."
                )
            image /= 255.0
        return image


def _softmax0(logits: Any) -> Any:
    import torch

    return torch.softmax(logits, 0)


def _read_nifti(path: Path, *, reorient: bool) -> tuple[np.ndarray, list[float], np.ndarray]:
    """A 3D NIfTI channel as nnU-Net's readers give it: axes reversed, spacing reversed."""
    if not path.is_file():
        raise DataError(f"{path}: file does not exist. Fix: add it or correct the path.")
    try:
        img = nib.load(str(path))
        affine = np.asarray(img.affine, dtype=np.float64)
        if reorient:
            img = img.as_reoriented(io_orientation(affine))
        if len(img.shape) != 3:
            raise DataError(
                f"{path}: has shape {img.shape}; nnU-Net's NIfTI readers take one 3D volume "
                "per file. Fix: split channels into {case}_{0000}.nii.gz, {case}_{0001}..."
            )
        array = img.get_fdata(dtype=np.float64).transpose(2, 1, 0).astype(np.float32)
        spacing = [float(z) for z in img.header.get_zooms()[:3]][::-1]
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a broken file
        raise DataError(
            f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err}). Fix: copy or "
            "re-export the file."
        ) from err
    return array, spacing, affine


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None, nonzero_label: int = -1
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """nnU-Net's crop: the box of voxels nonzero in any channel (holes of the mask filled).

    Returns:
        ``(data, seg, bbox)``: cropped arrays (``seg`` -1 where it is 0 outside the mask, or
        the mask as 0/-1 int8 when ``seg`` is None) and the half-open box per axis.
    """
    mask = np.any(data != 0, axis=0)
    mask = ndimage.binary_fill_holes(mask)
    bbox = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        bbox.append((int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, mask.shape[axis]))
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    mask = mask[sl][None]
    data = data[(slice(None), *sl)]
    if seg is not None:
        seg = seg[(slice(None), *sl)]
        seg[(seg == 0) & ~mask] = nonzero_label
    else:
        seg = np.where(mask, np.int8(0), np.int8(nonzero_label))
    return data, seg, bbox


def compute_new_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    """``round(spacing / target · shape)`` per axis, in nnU-Net's operation order."""
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, target, shape, strict=True))


def separate_z_axis(
    spacing: Sequence[float], target: Sequence[float], resampling: Resampling
) -> int | None:
    """The axis resampled on its own (nearest neighbour) or None (nnU-Net's rule).

    The coarse axis of the current spacing when it is more than `ANISO_THRESHOLD` times the
    finest, else of the target spacing; None when two or three axes tie for coarsest.
    """

    def coarse(values: Sequence[float]) -> list[int]:
        v = np.asarray(values, dtype=float)
        return [int(a) for a in np.where(max(v) / v == 1)[0]]

    def aniso(values: Sequence[float]) -> bool:
        return bool(np.max(values) / np.min(values) > ANISO_THRESHOLD)

    if resampling.force_separate_z is not None:
        axes = coarse(spacing) if resampling.force_separate_z else []
    elif aniso(spacing):
        axes = coarse(spacing)
    elif aniso(target):
        axes = coarse(target)
    else:
        axes = []
    return axes[0] if len(axes) == 1 else None


def _clip_to_input(out: np.ndarray, image: np.ndarray) -> np.ndarray:
    np.clip(out, np.asarray(np.min(image)), np.asarray(np.max(image)), out=out)
    return out


def _zoom(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``skimage.transform.resize(image, shape, order, mode='edge', anti_aliasing=False)`` for a
    float64 ``image``: the same scipy call, then clipped to the input's range."""
    factors = np.divide(image.shape, shape)
    out = ndimage.zoom(
        image, [1 / f for f in factors], order=order, mode="nearest", cval=0, grid_mode=True
    )
    return _clip_to_input(out, image)


def _zoom_seg(seg: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """batchgenerators' ``resize_segmentation`` (float64 labels): order 0 nearest; else each
    label's indicator interpolated, the largest wins, an exact tie going to the nearest
    neighbour's label when it is among the tied, else to the smallest label."""
    nearest = _zoom(seg, shape, 0)
    if order == 0:
        return nearest
    labels = np.unique(seg)
    if labels.size == 1:
        return np.full(tuple(shape), labels[0], dtype=seg.dtype)
    win = np.zeros(tuple(shape), dtype=np.intp)
    nn = np.searchsorted(labels, nearest)
    best = nn_score = None
    for i, label in enumerate(labels):
        score = _zoom((seg == label).astype(float), shape, order)
        if best is None:
            best, nn_score = score, np.where(nn == 0, score, 0.0)
            continue
        np.copyto(nn_score, score, where=nn == i)
        better = score > best
        win[better] = i
        np.maximum(best, score, out=best)
    nn_wins = (nn_score == best) & (nn_score > 0)
    win[nn_wins] = nn[nn_wins]
    return labels[win]


def _z_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output slice for nearest-neighbour resampling along one axis: the
    coordinate nnU-Net hands ``map_coordinates`` (``scale·(o + 0.5) − 0.5``), rounded by scipy
    itself on a 1D ramp, so it equals nnU-Net's full coordinate grid without building one."""
    coords = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
    ramp = np.arange(n_in, dtype=np.float64)
    return ndimage.map_coordinates(ramp, [coords], order=0, mode="nearest").astype(np.intp)


def resample_data_or_seg(
    data: np.ndarray,
    new_shape: Sequence[int],
    spacing: Sequence[float],
    target: Sequence[float],
    resampling: Resampling,
    *,
    is_seg: bool = False,
) -> np.ndarray:
    """nnU-Net's ``resample_data_or_seg_to_shape`` of a ``(C, *S)`` array.

    Returns:
        ``(C, *new_shape)`` in ``data``'s dtype (the input itself when no axis changes size).
    """
    new_shape = np.asarray(new_shape, dtype=int)
    shape = np.asarray(data.shape[1:], dtype=int)
    if np.all(shape == new_shape):
        return data
    axis = separate_z_axis(spacing, target, resampling)
    order = resampling.order
    resize = _zoom_seg if is_seg else _zoom
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        # nnU-Net converts the whole array to float64 first; one channel at a time is the
        # same arithmetic in a fraction of the memory (a 100-class case: 1/100)
        channel = data[c].astype(float, copy=False)
        if axis is None:
            out[c] = resize(channel, new_shape, order)
            continue
        plane = [int(n) for a, n in enumerate(new_shape) if a != axis]
        slab_shape = new_shape.copy()
        slab_shape[axis] = shape[axis]
        slab = np.zeros(slab_shape)
        for i in range(shape[axis]):
            index = tuple(i if a == axis else slice(None) for a in range(3))
            slab[index] = resize(channel[index], plane, order)
        if shape[axis] == new_shape[axis]:
            out[c] = slab
        elif resampling.order_z == 0:
            out[c] = np.take(slab, _z_index(int(shape[axis]), int(new_shape[axis])), axis=axis)
        else:
            out[c] = _resample_z(slab, new_shape, resampling.order_z, is_seg=is_seg)
    return out


def _resample_z(slab: np.ndarray, new_shape: np.ndarray, order: int, *, is_seg: bool) -> np.ndarray:
    """nnU-Net's spline along the coarse axis (order_z > 0) on its full coordinate grid."""
    grids = np.mgrid[tuple(slice(0, int(n)) for n in new_shape)].astype(float)
    coords = np.stack(
        [float(m) / n * (g + 0.5) - 0.5 for g, m, n in zip(grids, slab.shape, new_shape)]
    )
    if not is_seg:
        return ndimage.map_coordinates(slab, coords, order=order, mode="nearest")
    out = np.zeros(tuple(int(n) for n in new_shape))
    for label in np.unique(slab):
        score = ndimage.map_coordinates(
            (slab == label).astype(float), coords, order=order, mode="nearest"
        )
        out[np.round(score) > 0.5] = label
    return out


__all__ = [
    "NORMALIZATIONS",
    "READERS",
    "NnUNetPreprocessor",
    "Resampling",
    "compute_new_shape",
    "crop_to_nonzero",
    "resample_data_or_seg",
    "separate_z_axis",
]
