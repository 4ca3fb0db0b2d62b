"""NIfTI I/O: validated reading, writing on a reference's grid.

Every reader turns nibabel/zlib failures into `segkit.DataError` naming the file
and the fix; `write_nifti` writes atomically through :mod:`segkit.fsio` (a
temporary name in the target directory, then a rename), so a crash never leaves
a half-written file under the final name.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from segkit.errors import DataError
from segkit.fsio import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# what nibabel raises for a damaged header or data block (beside OSError, ValueError, zlib)
_NIBABEL_ERRORS = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
    nib.spatialimages.HeaderTypeError,
    nib.spatialimages.ImageDataError,
    nib.wrapstruct.WrapStructError,
)
_SPACING_RTOL = 1e-3  # header float32 noise is ~1e-7; a real disagreement is far larger


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


@contextmanager
def quiet_nibabel() -> Iterator[None]:
    """nibabel logs each header problem it fixes or raises on; segkit reports a file's
    problem once, in its own error (one line), so those log lines stay unprinted."""
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


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
        with quiet_nibabel():
            img = nib.load(str(path))
            spacing = header_spacing(img, path)
        img.get_qform()  # written back into predictions: an invalid quaternion fails here
        dtype = img.get_data_dtype()
        if dtype.kind not in "biuf":
            raise DataError(
                f"{path}: holds {dtype} voxels; segkit reads integer or floating-point volumes. "
                "Fix: convert it (the magnitude of complex data, one channel of RGB) and save "
                "it as float32 (labels: an integer type)."
            )
        if kind == "image":
            data = np.asarray(img.dataobj, dtype=np.float32)
        else:
            data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error, ValueError, *_NIBABEL_ERRORS) as err:
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


def write_nifti(
    path: Path,
    array: np.ndarray,
    reference_path: Path,
    extensions: Sequence[nib.nifti1.Nifti1Extension] = (),
) -> Path:
    """Writes `array` as NIfTI with the affine and header of a reference file.

    Args:
        path: Output file (``.nii`` or ``.nii.gz``).
        array: Data in the reference's voxel grid: spatial shape equal to the
            reference's; an extra trailing axis (e.g. probabilities) is allowed.
        reference_path: The image whose affine and header are copied.
        extensions: Header extensions added to the reference's (e.g. what wrote the file).

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
    header.extensions.extend(extensions)
    out = nib.Nifti1Image(array, ref.affine, header)
    out.set_qform(ref.get_qform(), code=int(ref.header["qform_code"]))
    out.set_sform(ref.get_sform(), code=int(ref.header["sform_code"]))
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(out, str(tmp))
    return path
