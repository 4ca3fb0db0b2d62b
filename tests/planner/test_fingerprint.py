"""The planner's dataset fingerprint: per-case spacing and shape after the nonzero crop, in the
preprocessed arrays' (RAS) order, cached independently of preprocessing settings."""

from __future__ import annotations

import json
import os

import pytest

from segkit.data.fingerprint import (
    fingerprint_path,
    load_dataset_fingerprint,
    read_fingerprint,
)
from segkit.data.layouts import read_dataset
from segkit.errors import DataError
from tests.planner.conftest import DATA


def test_shapes_after_crop_and_spacings_are_in_ras_order(make_dataset):
    # File axes (i, j, k) map to RAS axes (2, 0, 1): canonical = file permuted back.
    root = make_dataset(
        [
            ((20, 30, 16), (2.5, 1.0, 1.2), [(2, 18), (5, 25), (0, 16)]),
            ((22, 28, 18), (2.5, 1.0, 1.2), [(1, 21), (0, 28), (3, 10)]),
        ],
        affine_axes=(2, 0, 1),
    )
    fp = load_dataset_fingerprint(root, progress=False)
    assert fp.axis_order == "RAS"
    # file box sizes (16, 20, 16) → RAS (20, 16, 16); (20, 28, 7) → (28, 7, 20)
    assert fp.shapes_after_crop == ((20, 16, 16), (28, 7, 20))
    assert fp.spacings == ((1.0, 1.2, 2.5), (1.0, 1.2, 2.5))
    assert fp.num_channels == 1 and fp.num_classes == 2
    assert fp.intensity[0]["min"] >= 1.0 and fp.intensity[0]["max"] <= 2.0


def test_fingerprint_is_cached_per_content_not_per_settings(make_dataset):
    root = make_dataset([((12, 14, 10), (1.0, 1.0, 1.0), None)] * 2)
    first = load_dataset_fingerprint(root, progress=False)
    path = fingerprint_path(read_dataset(root))
    assert path.is_file() and path.parent == root / "segkit_cache"
    data = json.loads(path.read_text())
    data["shapes_after_crop"][0] = [99, 99, 99]  # proves the second call reads the cache
    path.write_text(json.dumps(data))
    assert load_dataset_fingerprint(root, progress=False).shapes_after_crop[0] == (99, 99, 99)
    # A changed file (new mtime) is a new fingerprint, computed again.
    image = root / "imagesTr" / "case_000.nii.gz"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert fingerprint_path(read_dataset(root)) != path
    assert load_dataset_fingerprint(root, progress=False).shapes_after_crop == (
        first.shapes_after_crop
    )


def test_nnunet_fingerprint_is_read_with_axes_reversed():
    fp = read_fingerprint(DATA / "Dataset005_Prostate" / "dataset_fingerprint.json")
    assert fp.num_cases == 32
    assert fp.spacings[0] == (0.62, 0.62, 3.6)  # nnU-Net stores (3.6, 0.62, 0.62)
    assert fp.shapes_after_crop[0] == (319, 320, 20)
    assert fp.num_channels == 2 and fp.num_classes == 3  # classes from dataset.json beside it
    kept = read_fingerprint(
        DATA / "Dataset005_Prostate" / "dataset_fingerprint.json", reverse_nnunet_axes=False
    )
    assert kept.spacings[0] == (3.6, 0.62, 0.62)
    # segkit's own format round-trips through nnU-Net's
    assert read_fingerprint_roundtrip(fp) == fp.spacings


def read_fingerprint_roundtrip(fp):
    from segkit.data.fingerprint import fingerprint_from_dict

    return fingerprint_from_dict(fp.to_nnunet()).spacings


def test_missing_fingerprint_file_says_what_to_give(tmp_path):
    with pytest.raises(DataError, match="planner.fingerprint"):
        read_fingerprint(tmp_path / "nope.json")
