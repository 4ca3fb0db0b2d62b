"""NIfTI and array I/O: validated reading, atomic writing.

Every reader turns nibabel/zlib failures into `segkit.DataError` naming the file
and the fix; every writer writes to a temporary name in the target directory and
renames it into place, so a crash never leaves a half-written file under the
final name.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from segkit.errors import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_SPACING_RTOL = 1e-3  # header float32 noise is ~1e-7; a real disagreement is far larger
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NiftiVolume:
    """A volume read from disk.

    Attributes:
        data: The voxel array, float32 for images, as stored for labels.
        affine: The 4x4 voxel-to-world matrix.
        spacing: Voxel sizes of the spatial axes (mm) from the header, in the file's
            axis order; checked positive and consistent with the affine.
        path: Where it was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    path: Path


def strip_nifti_suffix(name: str) -> str:
    """Returns `name` without its `.nii.gz` / `.nii` ending."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def header_spacing(img: nib.Nifti1Image, path: Path) -> tuple[float, ...]:
    """Voxel sizes of the spatial axes (mm) from the header, checked against the affine.

    nibabel silently replaces a zero pixdim by 1 and a negative one by its absolute
    value when it loads a header, so the stored values are read unmodified here.

    Args:
        img: The loaded image (header only is used).
        path: Its file, for messages and for the unmodified header.

    Returns:
        Spacing of the first ``min(3, ndim)`` axes, rounded to 6 digits (header zooms
        are float32: 0.800000011920929 becomes 0.8).

    Raises:
        DataError: A zero, negative or non-finite spacing; a singular or non-finite
            affine; or spacing that disagrees with the affine's voxel sizes.
    """
    n = min(3, len(img.shape))
    try:
        with ImageOpener(str(path)) as fh:
            stored = type(img.header).from_fileobj(fh, check=False).get_zooms()[:n]
    except Exception:  # noqa: BLE001 - not a plain NIfTI header: use nibabel's values
        stored = img.header.get_zooms()[:n]
    stored = tuple(float(z) for z in stored)
    bad = [i for i, z in enumerate(stored) if not np.isfinite(z) or z <= 0]
    if bad:
        raise DataError(
            f"{path}: header spacing (pixdim) is {list(stored)} mm; axis {bad[0]} is "
            f"{stored[bad[0]]}, but a voxel size must be a positive number. Fix: write the "
            "true voxel sizes into the header (e.g. nibabel's header.set_zooms) or re-export "
            "the file from its source."
        )
    linear = np.asarray(img.affine, dtype=np.float64)[:3, :n]
    sizes = np.sqrt((linear**2).sum(axis=0)) if np.isfinite(linear).all() else None
    if sizes is None or n == 3 and abs(np.linalg.det(linear)) < 1e-12:
        raise DataError(
            f"{path}: the affine (sform/qform) is singular or not finite:\n{img.affine}\n"
            "Fix: write a valid voxel-to-world matrix into the header."
        )
    if not np.allclose(sizes, stored, rtol=_SPACING_RTOL, atol=1e-6):
        raise DataError(
            f"{path}: header spacing (pixdim) {[round(z, 6) for z in stored]} mm disagrees "
            f"with the voxel sizes of its affine {[round(float(s), 6) for s in sizes]} mm "
            "(lengths of the affine's columns). segkit would resample with one and write with "
            "the other. Fix: make them agree, e.g. nib.save(nib.Nifti1Image(img.dataobj, "
            "img.affine), path) rewrites pixdim from the affine if the affine is right."
        )
    return tuple(round(z, 6) for z in stored)


def read_nifti(path: Path, *, kind: str = "image") -> NiftiVolume:
    """Reads a NIfTI file, turning every read failure into a `DataError`.

    Args:
        path: The `.nii` or `.nii.gz` file.
        kind: ``"image"`` (read as float32 and checked for NaN/inf) or
            ``"label"`` (read with its stored dtype).

    Returns:
        The volume with its affine and header spacing.

    Raises:
        DataError: The file is missing, truncated, not NIfTI or holds NaN/inf.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: file does not exist. Fix: add the file or correct its entry in "
            "the dataset's dataset.json."
        )
    try:
        img = nib.load(str(path))
        spacing = header_spacing(img, path)
        if kind == "image":
            data = np.asarray(img.dataobj, dtype=np.float32)
        else:
            data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise DataError(
            f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err}). The file is "
            "probably truncated or corrupt. Fix: copy or re-export it again."
        ) from err
    if kind == "image" and not np.isfinite(data).all():
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise DataError(
            f"{path}: {bad} voxel(s) are NaN or infinite. Fix: replace them in the source "
            "file (e.g. with 0 or the minimum intensity) before training."
        )
    return NiftiVolume(
        data=data, affine=np.asarray(img.affine, dtype=np.float64), spacing=spacing, path=path
    )


def _temp_sibling(path: Path, suffix: str) -> Path:
    # Same directory so os.replace is an atomic rename on the same filesystem;
    # leading dot + ".tmp-" lets cleanup find leftovers of a crashed run.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


@contextmanager
def atomic_path(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary sibling path that replaces `path` on success.

    Args:
        path: The final destination.
        suffix: Ending the temporary name needs (e.g. ``".nii.gz"`` so nibabel
            compresses).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def file_lock(path: Path, *, waiting: str = "") -> Iterator[None]:
    """Holds an exclusive advisory lock (``flock``) on `path` for the block.

    The kernel releases the lock when its holder dies, so a killed process never
    blocks the next one. Where ``fcntl`` does not exist (Windows) this does nothing.

    Args:
        path: The lock file (created if missing; never deleted: deleting it would
            let two processes lock two different files of the same name).
        waiting: Logged once as a warning if another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s", waiting or f"waiting for another process to release {path}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as err:  # e.g. Lustre mounted without flock: ENOSYS / ENOLCK
            log.warning(
                "%s: this filesystem does not support file locks (%s); concurrent runs on it "
                "are not protected from each other. Fix: start one job first, or mount it "
                "with flock support.",
                path,
                err,
            )
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Writes `array` as `.npy` to `path` atomically (temp file + rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))
        fh.flush()
        os.fsync(fh.fileno())


def save_json_atomic(path: Path, obj: Any) -> None:
    """Writes `obj` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def write_nifti(path: Path, array: np.ndarray, reference_path: Path) -> Path:
    """Writes `array` as NIfTI with the affine and header of a reference file.

    Args:
        path: Output file (``.nii`` or ``.nii.gz``).
        array: Data in the reference's voxel grid: spatial shape equal to the
            reference's; an extra trailing axis (e.g. probabilities) is allowed.
        reference_path: The image whose affine and header are copied.

    Returns:
        The written path.

    Raises:
        DataError: The array does not match the reference's grid.
    """
    path = Path(path)
    ref = nib.load(str(reference_path))
    ref_shape = tuple(ref.shape[:3])
    if tuple(array.shape[:3]) != ref_shape:
        raise DataError(
            f"{path}: array shape {tuple(array.shape)} does not match the grid "
            f"{ref_shape} of reference {reference_path}. Fix: invert the prediction with "
            "Preprocessor.invert(...) before writing."
        )
    header = ref.header.copy()
    header.set_data_dtype(array.dtype)
    header.set_data_shape(array.shape)
    # The reference may carry scl_slope/inter; written labels must be stored verbatim.
    header.set_slope_inter(1.0, 0.0)
    out = nib.Nifti1Image(array, ref.affine, header)
    out.set_qform(ref.get_qform(), code=int(ref.header["qform_code"]))
    out.set_sform(ref.get_sform(), code=int(ref.header["sform_code"]))
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(out, str(tmp))
    return path
