"""Every kind of bad input ends in a DataError naming the file and the fix."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import save, set_pixdim

from segkit import DataError
from segkit.data import preprocess_dataset


def _run(root):
    return preprocess_dataset(root, num_workers=0, progress=False)


def test_truncated_gz(make_msd):
    root = make_msd()
    path = root / "imagesTr" / "case_01.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"case_01.nii.gz: cannot be read.*truncated.*Fix"):
        _run(root)


def test_nan_and_inf_reported_with_file(make_msd):
    root = make_msd()
    path = root / "imagesTr" / "case_02.nii.gz"
    data = np.zeros((8, 7, 9), np.float32)
    data[1, 2, 3], data[2, 2, 2] = np.nan, np.inf
    save(path, data, np.diag([1.0, 1.0, 2.5, 1.0]))
    with pytest.raises(DataError, match=r"case_02.nii.gz: 2 voxel\(s\) are NaN or infinite.*Fix"):
        _run(root)


def test_2d_file_where_3d_expected(make_msd):
    root = make_msd()
    save(root / "imagesTr" / "case_00.nii.gz", np.ones((9, 11), np.float32))
    with pytest.raises(DataError, match=r"case_00.nii.gz: is 2D; expected a 3D volume"):
        _run(root)


def test_2d_label_where_3d_expected(make_msd):
    root = make_msd()
    save(root / "labelsTr" / "case_00.nii.gz", np.ones((9, 11), np.uint8))
    with pytest.raises(DataError, match=r"case_00.nii.gz: label has shape \(9, 11\); expected 3D"):
        _run(root)


def test_shape_mismatch(make_msd):
    root = make_msd()
    save(
        root / "labelsTr" / "case_01.nii.gz",
        np.zeros((13, 10, 6), np.uint8),
        np.diag([1.0, 1.0, 2.5, 1.0]),
    )
    with pytest.raises(DataError, match=r"labelsTr/case_01.nii.gz: shape \(13, 10, 6\) does not"):
        _run(root)


def test_affine_mismatch(make_msd):
    root = make_msd()
    save(
        root / "labelsTr" / "case_01.nii.gz",
        np.zeros((13, 10, 5), np.uint8),
        np.diag([1.0, 1.0, 3.0, 1.0]),
    )
    with pytest.raises(DataError, match=r"(?s)case_01.nii.gz: affine differs.*Fix"):
        _run(root)


def test_non_integer_labels(make_msd):
    root = make_msd()
    label = np.zeros((9, 11, 7), np.float32)
    label[2, 2, 2] = 0.5
    save(root / "labelsTr" / "case_00.nii.gz", label, np.diag([1.0, 1.0, 2.5, 1.0]))
    with pytest.raises(
        DataError, match=r"case_00.nii.gz: label map holds non-integer values \[0.5"
    ):
        _run(root)


def test_out_of_range_labels(make_msd):
    root = make_msd()
    label = np.zeros((9, 11, 7), np.int16)
    label[2, 2, 2] = 5
    save(root / "labelsTr" / "case_00.nii.gz", label, np.diag([1.0, 1.0, 2.5, 1.0]))
    with pytest.raises(DataError, match=r"case_00.nii.gz: label values \[5\] are outside.*0..2"):
        _run(root)


def test_channel_count_mismatch(make_msd):
    root = make_msd(channels=1)
    save(
        root / "imagesTr" / "case_00.nii.gz",
        np.ones((9, 11, 7, 2), np.float32),
        np.diag([1.0, 1.0, 2.5, 1.0]),
    )
    with pytest.raises(DataError, match=r"holds 2 channel\(s\) but dataset.json declares 1"):
        _run(root)


def test_not_gzip_at_all(make_msd):
    root = make_msd()
    (root / "imagesTr" / "case_00.nii.gz").write_bytes(gzip.compress(b"not a nifti file"))
    with pytest.raises(DataError, match="case_00.nii.gz"):
        _run(root)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.0, r"\[1.0, 1.0, 0.0\] mm; axis 2 is 0.0, but a voxel size must be a positive"),
        (-2.5, r"axis 2 is -2.5, but a voxel size must be a positive number"),
        (float("nan"), r"axis 2 is nan, but a voxel size must be a positive number"),
        (5.0, r"pixdim\) \[1.0, 1.0, 5.0\] mm disagrees with the voxel sizes of its affine "
         r"\[1.0, 1.0, 2.5\]"),
    ],
    ids=["zero", "negative", "nan", "disagrees_with_affine"],
)  # fmt: skip
def test_bad_header_spacing(make_msd, value, message):
    # nibabel would load a zero pixdim as 1 and a negative one as its absolute value
    root = make_msd()
    set_pixdim(root / "imagesTr" / "case_01.nii.gz", 2, value)
    with pytest.raises(DataError, match=rf"(?s)case_01.nii.gz: header spacing.*{message}.*Fix"):
        _run(root)
    assert not list((root / "segkit_cache").rglob("*.json"))  # nothing half-written


def test_ct_normalisation_without_any_foreground(make_nnunet):
    root = make_nnunet(channels=2)
    for label in (root / "labelsTr").iterdir():
        img = nib.load(str(label))
        save(label, np.zeros(img.shape, np.uint8), img.affine)
    with pytest.raises(
        DataError, match=r"channel 0 \('CT'\) uses 'ct' normalisation.*no spread.*zscore"
    ):
        _run(root)
    assert not list((root / "segkit_cache").rglob("*.json"))
