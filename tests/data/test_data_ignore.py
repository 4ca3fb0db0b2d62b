"""The ignore label in the data path: dataset.json parsing, statistics, sampling, sparse demo."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from segkit import ConfigError, DataError
from segkit.data import read_dataset, read_dataset_info
from segkit.data.cache import preprocess_dataset
from segkit.data.demo import IGNORE, make_demo
from segkit.data.fingerprint import compute_dataset_fingerprint
from segkit.data.sampling import PatchDataset
from tests.data.conftest import write_msd


def _edit(root, change) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------ dataset.json


def test_nnunet_ignore_label_is_read_and_is_not_a_class(make_nnunet):
    root = make_nnunet()
    _edit(root, lambda m: m["labels"].update(ignore=3))
    info = read_dataset_info(root)
    assert info.ignore_label == 3
    assert info.num_classes == 3  # the network's outputs: background, liver, tumour
    assert info.label_names == {0: "background", 1: "liver", 2: "tumour"}
    assert info.num_label_values == 4


def test_msd_ignore_label_is_read(make_msd):
    root = make_msd()
    _edit(root, lambda m: m["labels"].update({"3": "ignore"}))
    info = read_dataset_info(root)
    assert (info.ignore_label, info.num_classes) == (3, 3)
    assert 3 not in info.label_names


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        # collides with the class 'tumour' (2)
        (
            {"background": 0, "liver": 1, "tumour": 2, "ignore": 2},
            r"dataset.json: 'labels' \"ignore\": 2 collides with the class 'tumour'.*"
            r"Fix: give 'ignore' the value 3",
        ),
        # below the highest class
        (
            {"background": 0, "liver": 1, "tumour": 3, "ignore": 2},
            r"dataset.json: 'labels' \"ignore\": 2 is below the highest class.*"
            r"highest value.*Fix: set 'ignore' to 4",
        ),
        # a gap above the classes
        (
            {"background": 0, "liver": 1, "tumour": 2, "ignore": 5},
            r"dataset.json: 'labels' \"ignore\": 5 is not next to the classes.*Fix: set "
            r"'ignore' to 3",
        ),
        (
            {"background": 0, "liver": 1, "ignore": "x"},
            r"dataset.json: 'labels' \"ignore\": 'x': the ignore label must be one integer.*Fix",
        ),
    ],
)
def test_bad_ignore_label_names_dataset_json_the_key_and_the_fix(make_nnunet, labels, message):
    root = make_nnunet()
    _edit(root, lambda m: m.update(labels=labels))
    with pytest.raises(DataError, match=message):
        read_dataset(root)


def test_msd_ignore_below_the_classes_is_refused(make_msd):
    root = make_msd()  # classes 0, 1, 2
    _edit(root, lambda m: m.update(labels={"0": "bg", "1": "ignore", "2": "a", "3": "b"}))
    with pytest.raises(DataError, match=r"'labels' \"1\": \"ignore\" is below the highest"):
        read_dataset(root)


# -------------------------------------------------- statistics, cache and sampling


def _ignore_dataset(root, *, annotated_z: int = 10):
    """One 40³ case: class 1 a box at the low corner, ignore above z >= annotated_z.

    Ignored voxels are very bright (1000), so statistics that counted them would show it.
    """
    shape = (40, 40, 40)
    label = np.zeros(shape, np.uint8)
    label[2:8, 2:8, 2:8] = 1
    label[:, :, annotated_z:] = 2
    image = np.full((*shape, 1), 50.0, np.float32)
    image[label == 1] = 100.0
    image[label == 2] = 1000.0
    write_msd(root, [(image, label)], num_classes=2)
    _edit(root, lambda m: m["labels"].update({"2": "ignore"}))
    return image[..., 0], label


def test_foreground_statistics_leave_out_the_ignored_voxels(tmp_path):
    image, label = _ignore_dataset(tmp_path / "ds")
    fp = compute_dataset_fingerprint(read_dataset(tmp_path / "ds"), progress=False)
    # reference: numpy over the annotated foreground the test wrote
    expected = image[label == 1]
    assert fp.intensity[0]["max"] == pytest.approx(expected.max())
    assert fp.intensity[0]["mean"] == pytest.approx(expected.mean())


def _patches(tmp_path, **kwargs):
    root = tmp_path / "ds"
    _ignore_dataset(root)
    info = read_dataset_info(root)
    prepared = preprocess_dataset(
        root, target_spacing=(1.0, 1.0, 1.0), normalization="none", num_workers=0, progress=False
    )
    return PatchDataset(
        cases_dir=prepared.cases_dir,
        case_ids=prepared.case_ids,
        patch_size=(8, 8, 8),
        num_samples=200,
        ignore_label=info.ignore_label,
        **kwargs,
    )


def test_foreground_oversampling_uses_annotated_foreground_only(tmp_path):
    ds = _patches(tmp_path, oversample_foreground=1.0)
    labels = [ds.sample_patch(i)[1] for i in range(60)]
    # every forced patch is centred on class 1, never on the (far larger) ignored region
    assert all((lab == 1).any() for lab in labels)


def test_random_patches_are_drawn_where_annotations_exist(tmp_path):
    ds = _patches(tmp_path, oversample_foreground=0.0)
    annotated = np.mean([(ds.sample_patch(i)[1] != 2).any() for i in range(200)])
    # one draw holds an annotated voxel with probability 10/33 (z corner <= 9 of 0..32);
    # redrawn up to 10 times, all but (23/33)^11 ≈ 2% of patches hold one
    assert annotated >= 0.9


# --------------------------------------------------------------- sparse demo


@pytest.fixture(scope="module")
def sparse_and_dense(tmp_path_factory):
    base = tmp_path_factory.mktemp("sparse_demo")
    dense = make_demo(base / "dense", num_cases=2, seed=3)
    sparse = make_demo(base / "sparse", num_cases=2, seed=3, sparse=0.2)
    return dense, sparse


def _load(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_sparse_demo_annotates_the_declared_fraction_of_slices(sparse_and_dense):
    dense, sparse = sparse_and_dense
    meta = json.loads((sparse / "dataset.json").read_text())
    assert meta["labels"][str(IGNORE)] == "ignore"
    assert read_dataset_info(sparse).ignore_label == IGNORE
    for entry in meta["training"]:
        lab = _load(sparse / entry["label"])
        ref = _load(dense / entry["label"])
        depth = lab.shape[-1]
        per_slice = [np.unique(lab[..., z]) for z in range(depth)]
        annotated = [z for z, v in enumerate(per_slice) if IGNORE not in v]
        # each slice is either fully annotated or fully ignored
        assert all(list(v) == [IGNORE] for z, v in enumerate(per_slice) if z not in annotated)
        assert len(annotated) == round(0.2 * depth)
        # annotated slices are the dense labels, spread over the volume
        np.testing.assert_array_equal(lab[..., annotated], ref[..., annotated])
        assert max(np.diff(annotated)) <= depth / len(annotated) + 1
    # images and the held-out labels are the dense demo's: the two compare on the same cases
    for sub in ("imagesTr", "labelsTs"):
        for f in sorted((dense / sub).iterdir()):
            np.testing.assert_array_equal(_load(sparse / sub / f.name), _load(f))


def test_sparse_fraction_out_of_range_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"sparse=1.5.*\(0, 1\].*Fix"):
        make_demo(tmp_path / "x", sparse=1.5)
