"""Preprocessing, its exact inversion onto the original grid, and the cache."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_PERMUTED, oblique_affine
from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

from segkit.data import Preprocessor, preprocess_dataset, read_dataset, write_nifti


def _load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("affine", [LPS_PERMUTED, oblique_affine()], ids=["lps_perm", "oblique"])
def test_round_trip_exact_without_resampling(make_msd, tmp_path, affine):
    root = make_msd(affine=affine)
    prep = preprocess_dataset(root, num_workers=0, progress=False)
    pre = prep.preprocessor
    for case in read_dataset(root).training:
        _, seg, props = pre.preprocess_case(case.images, case.label)
        label, label_affine = _load(case.label)
        assert props["resampled_shape"] == props["shape_after_crop"]  # median spacing
        back = pre.invert(seg, props)
        out = write_nifti(tmp_path / f"{case.case_id}_pred.nii.gz", back, case.images[0])
        data, out_affine = _load(out)
        assert data.shape == label.shape
        np.testing.assert_array_equal(out_affine, nib.load(str(case.images[0])).affine)
        np.testing.assert_array_equal(data, label)


def test_canonical_orientation_and_spacing(make_msd):
    root = make_msd(affine=LPS_PERMUTED, shapes=((9, 11, 7),))
    pre = preprocess_dataset(root, num_workers=0, progress=False).preprocessor
    case = read_dataset(root).training[0]
    image, seg, props = pre.preprocess_case(case.images, case.label)
    label, _ = _load(case.label)
    # LPS_PERMUTED: file axis 0 runs along -y, axis 1 along -x: RAS = flip both, swap.
    assert props["canonical_shape"] == [11, 9, 7]
    assert props["canonical_spacing"] == [1.0, 1.0, 2.5]
    box = props["crop_box"]
    expected = np.transpose(label, (1, 0, 2))[::-1, ::-1][tuple(slice(a, b) for a, b in box)]
    np.testing.assert_array_equal(seg, expected)
    assert image.dtype == np.float32 and image.shape == (1, *seg.shape)


def _linear_resize(array: np.ndarray, shape) -> np.ndarray:
    """Edge-aligned separable linear resize, written out (voxel centres map as
    ``in = (out + 0.5)·n/m − 0.5``, clamped at the borders)."""
    for axis, m in enumerate(shape):
        n = array.shape[axis]
        x = np.clip((np.arange(m) + 0.5) * n / m - 0.5, 0, n - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = (x - lo).reshape([-1 if a == axis else 1 for a in range(array.ndim)])
        array = (1 - w) * np.take(array, lo, axis) + w * np.take(array, hi, axis)
    return array


def _label_edge(label: np.ndarray) -> np.ndarray:
    """Voxels with a differently labelled voxel among their 26 neighbours."""
    from scipy import ndimage

    return ndimage.maximum_filter(label, 3, mode="nearest") != ndimage.minimum_filter(
        label, 3, mode="nearest"
    )


def test_round_trip_with_resampling_oblique(make_msd, tmp_path):
    root = make_msd(affine=oblique_affine(), shapes=((13, 12, 9), (11, 15, 7)))
    # Finer than the data's canonical spacing (2.0, 1.0, 1.2) on every axis: each voxel of
    # the fine grid lies within 0.5/f < 0.5 original voxels of the one it copies, so
    # nearest there and back returns every original voxel exactly. Linear inversion of
    # one-hot probabilities only reads voxels within 1.5 voxels, so its argmax can differ
    # from the label only where a 26-neighbour carries another label.
    target = (1.6, 0.8, 0.9)
    pre = preprocess_dataset(
        root, num_workers=0, progress=False, target_spacing=target
    ).preprocessor
    assert pre.target_spacing == target
    for case in read_dataset(root).training:
        image, seg, props = pre.preprocess_case(case.images, case.label)
        label, _ = _load(case.label)
        assert list(seg.shape) == props["resampled_shape"] != props["shape_after_crop"]
        back = pre.invert(seg, props)
        assert back.shape == label.shape
        onehot = np.stack([(seg == k).astype(np.float32) for k in range(3)])
        probs = pre.invert(onehot, props)
        assert probs.shape == (3, *label.shape)
        assert all((label == k).any() for k in (1, 2))
        np.testing.assert_array_equal(back, label)
        wrong = probs.argmax(0) != label
        assert not (wrong & ~_label_edge(label)).any()
        # the probabilities themselves, against a linear resize written out here
        to_ras = ornt_transform(np.asarray(props["orientation"], float), axcodes2ornt("RAS"))
        canon = np.stack([apply_orientation(p, to_ras) for p in probs])
        crop = canon[(slice(None), *(slice(a, b) for a, b in props["crop_box"]))]
        expected = np.stack([_linear_resize(c, crop.shape[1:]) for c in onehot])
        np.testing.assert_allclose(crop, expected, atol=1e-5)
        outside = np.ones(canon.shape[1:], bool)
        outside[tuple(slice(a, b) for a, b in props["crop_box"])] = False
        assert (canon[0][outside] == 1).all() and (canon[1:][:, outside] == 0).all()
        out = write_nifti(tmp_path / "p.nii", back.astype(np.uint8), case.images[0])
        np.testing.assert_array_equal(_load(out)[1], nib.load(str(case.images[0])).affine)


def test_nnunet_multichannel_ct_normalisation(make_nnunet):
    root = make_nnunet(channels=2)
    prep = preprocess_dataset(root, num_workers=0, progress=False)
    pre = prep.preprocessor
    assert pre.normalization == ("ct", "zscore")
    stats = pre.intensity_stats[0]
    assert stats.lower < stats.mean < stats.upper
    assert pre.intensity_stats[1] is None
    assert pre.target_spacing == (0.8, 0.8, 3.0)
    image = np.load(prep.cases_dir / "pt000_image.npy", mmap_mode="r")
    assert isinstance(image, np.memmap)
    assert image.shape[0] == 2 and image.dtype == np.float32
    # Clipped to the dataset's 0.5/99.5 foreground percentiles, then standardised.
    lo = (stats.lower - stats.mean) / stats.std
    hi = (stats.upper - stats.mean) / stats.std
    assert image[0].min() >= lo - 1e-3 and image[0].max() <= hi + 1e-3
    assert abs(float(image[1].mean())) < 0.2  # z-score per case (before resampling)


def test_msd_4d_multichannel_uncompressed(make_msd):
    root = make_msd(channels=3, suffix=".nii")
    prep = preprocess_dataset(root, num_workers=0, progress=False)
    image = np.load(prep.cases_dir / "case_00_image.npy")
    label = np.load(prep.cases_dir / "case_00_label.npy")
    assert image.shape == (3, *label.shape)


def test_preprocess_new_image_and_serialise(make_nnunet):
    root = make_nnunet(channels=2)
    pre = preprocess_dataset(root, num_workers=0, progress=False).preprocessor
    restored = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert restored == pre
    case = read_dataset(root).test[0]
    image, props = restored.preprocess_image(list(case.images))
    assert image.dtype == np.float32 and image.shape[0] == 2
    seg = np.ones(image.shape[1:], np.uint8)
    back = restored.invert(seg, props)
    assert back.shape == tuple(nib.load(str(case.images[0])).shape)


def test_parallel_equals_serial_and_cache_reused(make_msd, tmp_path):
    root = make_msd(shapes=((9, 11, 7), (13, 10, 5), (8, 7, 9), (7, 7, 7)))
    serial = preprocess_dataset(root, num_workers=0, progress=False, cache_dir=tmp_path / "a")
    parallel = preprocess_dataset(root, num_workers=2, progress=False, cache_dir=tmp_path / "b")
    for cid in serial.case_ids:
        for kind in ("image", "label", "fg"):
            np.testing.assert_array_equal(
                np.load(serial.cases_dir / f"{cid}_{kind}.npy"),
                np.load(parallel.cases_dir / f"{cid}_{kind}.npy"),
            )
    stamp = (serial.cases_dir / "case_00_image.npy").stat().st_mtime_ns
    again = preprocess_dataset(root, num_workers=0, progress=False, cache_dir=tmp_path / "a")
    assert again.cache_dir == serial.cache_dir
    assert (again.cases_dir / "case_00_image.npy").stat().st_mtime_ns == stamp
    other = preprocess_dataset(
        root, num_workers=0, progress=False, cache_dir=tmp_path / "a", normalization="none"
    )
    assert other.cache_dir != serial.cache_dir
    assert serial.cache_dir.parent == tmp_path / "a"


def test_unmarked_case_with_corrupt_array_is_redone(make_msd):
    root = make_msd()
    prep = preprocess_dataset(root, num_workers=0, progress=False)
    good = np.load(prep.cases_dir / "case_02_image.npy")
    (prep.cases_dir / "case_02.json").unlink()
    (prep.cases_dir / "case_02_image.npy").write_bytes(b"garbage")
    preprocess_dataset(root, num_workers=0, progress=False)
    np.testing.assert_array_equal(np.load(prep.cases_dir / "case_02_image.npy"), good)


def test_write_nifti_checks_grid_and_leaves_no_temp(make_msd, tmp_path):
    from segkit import DataError

    root = make_msd(shapes=((9, 11, 7),), affine=LPS_PERMUTED)
    ref = root / "imagesTr" / "case_00.nii.gz"
    out_dir = tmp_path / "pred"
    out = write_nifti(out_dir / "p.nii.gz", np.zeros((9, 11, 7, 2), np.float32), ref)
    assert nib.load(str(out)).shape == (9, 11, 7, 2)  # trailing axis allowed
    assert [p.name for p in out_dir.iterdir()] == ["p.nii.gz"]
    with pytest.raises(DataError, match=r"does not match the grid \(9, 11, 7\).*invert"):
        write_nifti(out_dir / "q.nii.gz", np.zeros((11, 9, 7), np.uint8), ref)
    assert not (out_dir / "q.nii.gz").exists()


class _RecordsReads:
    """An array that records the slices of its first axis that are read from it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.reads = array, array.shape, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.array[key]


# (source shape, output shape): down and up, 4 → 6 with exact nearest ties, one-voxel axes
RESIZES = [((4, 5, 3), (6, 7, 3)), ((9, 2, 5), (4, 3, 1)), ((1, 3, 2), (3, 2, 4)), ((7, 7, 7),) * 2]


@pytest.mark.parametrize(("src_shape", "shape"), RESIZES)
def test_resample_rows_linear_is_scipy_and_any_slab_is_the_whole(src_shape, shape):
    from scipy import ndimage

    from segkit.data.preprocess import resample_rows

    source = np.random.default_rng(1).random(src_shape, dtype=np.float32)
    whole = resample_rows(source, shape, order=1)
    scale = np.array(src_shape, float) / np.array(shape, float)
    expected = ndimage.affine_transform(
        source, scale, offset=0.5 * scale - 0.5, output_shape=shape, order=1, mode="nearest"
    )
    assert whole.dtype == np.float32
    np.testing.assert_allclose(whole, expected, atol=1e-6)
    np.testing.assert_allclose(whole, _linear_resize(source, shape), atol=1e-6)
    n_in, n_out = src_shape[0], shape[0]
    for start in range(n_out):
        for stop in range(start + 1, n_out + 1):
            rec = _RecordsReads(source)
            np.testing.assert_array_equal(
                resample_rows(rec, shape, (start, stop), order=1), whole[start:stop]
            )
            # read: the rows the slab's first and last voxel centres lie between, and no more
            x = [Fraction((2 * o + 1) * n_in - n_out, 2 * n_out) for o in (start, stop - 1)]
            first = min(max(math.floor(x[0]), 0), n_in - 1)
            last = min(max(math.floor(x[1]), 0) + 1, n_in - 1)
            assert rec.reads == [slice(first, last + 1)]


@pytest.mark.parametrize(("src_shape", "shape"), RESIZES)
def test_resample_rows_nearest_copies_the_nearest_voxel_and_any_slab_is_the_whole(src_shape, shape):
    from segkit.data.preprocess import resample_rows

    source = np.arange(math.prod(src_shape), dtype=np.int32).reshape(src_shape)
    whole = resample_rows(source, shape, order=0)
    assert whole.dtype == np.int32 and whole.shape == shape
    picks = np.unravel_index(whole, src_shape)  # which source voxel each output voxel copies
    for axis, (n_in, n_out) in enumerate(zip(src_shape, shape, strict=True)):
        o = np.arange(n_out).reshape([-1 if a == axis else 1 for a in range(3)])
        i = np.arange(n_in)
        # the distance between the centres, as fractions of the axis, times 2·n_in·n_out
        dist = np.abs((2 * picks[axis] + 1) * n_out - (2 * o + 1) * n_in)
        nearest = np.abs((2 * i[:, None] + 1) * n_out - (2 * np.arange(n_out) + 1) * n_in).min(0)
        assert (dist == nearest.reshape(o.shape)).all(), axis
    for start in range(shape[0]):
        for stop in range(start + 1, shape[0] + 1):
            np.testing.assert_array_equal(
                resample_rows(source, shape, (start, stop), order=0), whole[start:stop]
            )
