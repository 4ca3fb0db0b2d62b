"""The synthetic demo dataset."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from segkit import DataError
from segkit.data import make_demo, read_dataset


def test_demo_layout_sizes_and_classes(demo_root):
    ds = read_dataset(demo_root)
    assert ds.info.layout == "msd" and ds.info.channel_names == ["MRI"]
    assert ds.info.num_classes == 4 and ds.info.num_training == 5
    assert len(ds.test) == 3
    shapes = set()
    for case in ds.training:
        img = nib.load(str(case.images[0]))
        label = np.asarray(nib.load(str(case.label)).dataobj)
        data = img.get_fdata()
        assert all(n % 2 == 1 and 35 <= n <= 79 for n in img.shape)
        assert img.header.get_zooms() == (1.0, 1.0, 2.5)
        assert set(np.unique(label)) == {0, 1, 2, 3}
        means = [data[label == k].mean() for k in range(4)]
        body_bg = data[(label == 0) & (data != 0)].mean()
        # bright > textured > medium > body tissue: separable by intensity (and texture).
        assert means[1] > means[3] > means[2] > body_bg
        shapes.add(img.shape)
    assert len(shapes) == 5


def test_demo_is_deterministic_and_idempotent(tmp_path, demo_root):
    root = make_demo(tmp_path / "again", num_cases=5, seed=0)
    for sub in ("imagesTr/demo_003.nii.gz", "labelsTr/demo_001.nii.gz", "imagesTs/demo_006.nii.gz"):
        a = np.asarray(nib.load(str(root / sub)).dataobj)
        b = np.asarray(nib.load(str(demo_root / sub)).dataobj)
        np.testing.assert_array_equal(a, b)
    stamp = (root / "dataset.json").stat().st_mtime_ns
    assert make_demo(root) == root  # existing dataset is kept as is
    assert (root / "dataset.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    other = make_demo(tmp_path / "other", num_cases=1, seed=1)
    assert (
        nib.load(str(other / "imagesTr/demo_000.nii.gz")).shape
        != nib.load(str(root / "imagesTr/demo_000.nii.gz")).shape
    )


def test_demo_refuses_foreign_directory(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds no dataset.json"):
        make_demo(tmp_path / "busy")


def test_demo_test_cases_have_labels_for_evaluation(demo_root):
    ds = read_dataset(demo_root)
    for case in ds.test:
        image = nib.load(str(case.images[0]))
        label = nib.load(str(demo_root / "labelsTs" / case.images[0].name))
        assert label.shape == image.shape
        np.testing.assert_allclose(label.affine, image.affine)
        assert set(np.unique(np.asarray(label.dataobj))) == {0, 1, 2, 3}
