"""segkit's nnU-Net preprocessing against nnU-Net's own ``DefaultPreprocessor`` run live.

Each case writes small NIfTI files and a plans dict (nnunetv2 2.8.1's planner output for
Dataset005_Prostate, tests/planner/data, with spacing, axis order, reader and normalisation set
per case), runs ``DefaultPreprocessor().run_case`` and segkit's
``preprocessor_from_plans(plans).preprocess_case`` on the same files, and compares everything
``run_case`` returns that the network or the export uses.

Tolerance: none. segkit performs nnU-Net's operations in nnU-Net's order on the same dtypes
(float32 normalisation on the same memory layout, float64 spline resampling through the same
scipy calls, clipped as skimage clips), so arrays, boxes, shapes and spacings are compared for
equality, bit for bit. A differing library version that changes the arithmetic shows here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import oblique_affine

from segkit.data.nnunet_preprocess import (
    NnUNetPreprocessor,
    Resampling,
    compute_new_shape,
    separate_z_axis,
)
from segkit.errors import DataError
from segkit.planner.nnunet_plans import preprocessor_from_plans

default_preprocessor = pytest.importorskip(
    "nnunetv2.preprocessing.preprocessors.default_preprocessor"
)
plans_handler = pytest.importorskip("nnunetv2.utilities.plans_handling.plans_handler")

TEMPLATE = Path(__file__).parents[1] / "planner" / "data" / "Dataset005_Prostate"
CT_PROPS = {
    "max": 1200.0,
    "mean": 61.5,
    "median": 48.0,
    "min": -1000.0,
    "percentile_00_5": -480.0,
    "percentile_99_5": 710.0,
    "std": 233.25,
}


def _affine(spacing, axes=(0, 1, 2)) -> np.ndarray:
    """File axis i runs along world axis ``axes[i]``; axis 1 flipped."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for i, a in enumerate(axes):
        affine[a, i] = spacing[i] * (-1 if i == 1 else 1)
    affine[:3, 3] = [3.0, -2.0, 5.0]
    return affine


def _write_case(root: Path, shape, affine, *, ct: bool, channels: int, seed: int):
    """A body (ellipsoid, zero outside, a closed zero cavity inside) and three touching labels."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grid))
    body = (r < 0.85) & ~(np.abs(grid[0] - 0.35) + np.abs(grid[1]) + np.abs(grid[2]) < 0.25)
    images = []
    for c in range(channels):
        if ct:  # stored as int16, as CT is
            data = np.where(body, rng.normal(40, 300, shape), 0).astype(np.int16)
        else:
            data = np.where(body, rng.gamma(2.0 + c, 90.0, shape), 0).astype(np.float32)
        path = root / f"case_{c:04d}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(path))
        images.append(str(path))
    label = np.zeros(shape, np.uint8)
    label[r < 0.55] = 1
    label[(r < 0.55) & (grid[0] > 0.1)] = 2
    label[(r < 0.3) & (grid[1] > 0.0)] = 3
    seg = root / "case.nii.gz"
    nib.save(nib.Nifti1Image(label, affine), str(seg))
    return images, str(seg)


def _plans(configuration, *, reader, transpose, spacing, schemes, mask) -> dict:
    plans = json.loads((TEMPLATE / "nnUNetPlans.json").read_text())
    plans["image_reader_writer"] = reader
    plans["transpose_forward"] = list(transpose)
    plans["transpose_backward"] = [list(transpose).index(a) for a in range(3)]
    plans["foreground_intensity_properties_per_channel"] = {
        str(c): dict(CT_PROPS) for c in range(len(schemes))
    }
    cfg = plans["configurations"][configuration]
    cfg.update(spacing=list(spacing), normalization_schemes=schemes, use_mask_for_norm=mask)
    return plans


# (file shape, file spacing, file axes, reader, transpose_forward, target spacing, CT, channels,
# mask for z-score, configuration); spacings and targets in nnU-Net's transposed order
CASES = {
    # CT, near-isotropic: cubic on all axes; one axis halved (seg's linear ties at 0.5)
    "ct_iso": ((16, 14, 12), (0.5, 0.9, 1.1), (0, 1, 2), "SimpleITKIO", (0, 1, 2),
               (1.3, 0.75, 1.0), True, 1, False, "3d_fullres"),
    # CT, file axis 0 coarse (4 mm): nnU-Net's transpose puts it first, separate-z resampling
    # (cubic in-plane, nearest along z) with z halved: every z coordinate a rounding tie
    "ct_aniso": ((12, 15, 13), (2.5, 0.7, 0.7), (0, 1, 2), "SimpleITKIO", (2, 0, 1),
                 (5.0, 0.8, 0.6), True, 1, False, "3d_fullres"),
    # MR z-score within the nonzero mask, anisotropic in the file's last axis, z upsampled
    "mr_aniso_mask": ((17, 15, 7), (0.8, 0.8, 3.6), (0, 1, 2), "NibabelIO", (0, 1, 2),
                      (2.5, 0.7, 0.9), False, 1, True, "3d_fullres"),
    # MR, two channels, a permuted affine reoriented to RAS by the reader, isotropic target
    "mr_two_channels_reorient": ((13, 15, 11), (1.2, 0.9, 1.1), (1, 0, 2),
                                 "NibabelIOWithReorient", (0, 1, 2), (1.0, 1.0, 1.0), False, 2,
                                 False, "3d_fullres"),
    # MR, oblique affine, nnU-Net's 2D configuration (the slice axis keeps its spacing)
    "mr_2d_oblique": ((14, 12, 9), (1.0, 1.2, 2.0), None, "SimpleITKIO", (0, 1, 2), (0.9, 0.8),
                      False, 1, False, "2d"),
}  # fmt: skip


def _run(tmp_path, name, with_seg=True):
    shape, spacing, axes, reader, transpose, target, ct, channels, mask, config = CASES[name]
    affine = oblique_affine(spacing) if axes is None else _affine(spacing, axes)
    images, seg = _write_case(tmp_path, shape, affine, ct=ct, channels=channels, seed=len(name))
    scheme = "CTNormalization" if ct else "ZScoreNormalization"
    plans = _plans(
        config,
        reader=reader,
        transpose=transpose,
        spacing=target,
        schemes=[scheme] * channels,
        mask=[mask] * channels,
    )
    seg = seg if with_seg else None
    manager = plans_handler.PlansManager(copy.deepcopy(plans))
    dataset_json = json.loads((TEMPLATE / "dataset.json").read_text())
    ref = default_preprocessor.DefaultPreprocessor(verbose=False).run_case(
        images, seg, manager, manager.get_configuration(config), dataset_json
    )
    return ref, preprocessor_from_plans(plans, config), images, seg


def _assert_same(ref, ours):
    data, seg, props = ref
    got_data, got_seg, got = ours
    assert got_data.dtype == data.dtype == np.float32
    assert got_data.shape == data.shape
    np.testing.assert_array_equal(got_data, data)
    assert got_seg.dtype == seg.dtype
    np.testing.assert_array_equal(got_seg, seg)
    assert got["bbox_used_for_cropping"] == [
        list(map(int, b)) for b in props["bbox_used_for_cropping"]
    ]
    assert got["shape_before_cropping"] == list(props["shape_before_cropping"])
    assert got["shape_after_cropping_and_before_resampling"] == list(
        props["shape_after_cropping_and_before_resampling"]
    )
    assert got["spacing"] == [float(s) for s in props["spacing"]]


@pytest.mark.parametrize("name", CASES)
def test_preprocessing_equals_nnunet(tmp_path, name):
    ref, pre, images, seg = _run(tmp_path, name)
    ours = pre.preprocess_case(images, seg)
    _assert_same(ref, ours)
    data, seg_ref, props = ref
    # the cases exercise what they claim: a crop, resampling, -1 outside the mask, 3 labels
    assert np.prod(props["shape_before_cropping"]) > np.prod(
        props["shape_after_cropping_and_before_resampling"]
    )
    assert tuple(props["shape_after_cropping_and_before_resampling"]) != data.shape[1:]
    assert set(np.unique(seg_ref)) == {-1, 0, 1, 2, 3}


@pytest.mark.parametrize("name", ["ct_aniso", "mr_two_channels_reorient"])
def test_prediction_input_equals_nnunet(tmp_path, name):
    """Without a label map (what nnU-Net's predictor runs): seg is the 0/-1 mask."""
    ref, pre, images, _ = _run(tmp_path, name, with_seg=False)
    _assert_same(ref, pre.preprocess_case(images, None))


@pytest.mark.parametrize(
    ("name", "axis"), [("ct_aniso", 0), ("mr_aniso_mask", 0), ("ct_iso", None)]
)
def test_the_anisotropic_cases_resample_separate_z(tmp_path, name, axis):
    _, pre, images, _ = _run(tmp_path, name, with_seg=False)
    _, _, props = pre.preprocess_case(images, None)
    assert (
        separate_z_axis(props["spacing_transposed"], props["target_spacing"], Resampling()) == axis
    )


MUTANTS = {
    "linear instead of cubic": lambda p: dataclasses.replace(
        p, data_resampling=Resampling(order=1)
    ),
    "no separate z": lambda p: dataclasses.replace(
        p, data_resampling=Resampling(order=3, force_separate_z=False)
    ),
    "z-score over the whole crop": lambda p: dataclasses.replace(
        p, use_mask_for_norm=(False,) * p.num_channels
    ),
    "nearest labels": lambda p: dataclasses.replace(p, seg_resampling=Resampling(order=0)),
}


@pytest.mark.parametrize("mutant", MUTANTS)
def test_a_wrong_setting_is_detected(tmp_path, mutant):
    """The comparison is sharp: each plausible mistake changes the arrays."""
    ref, pre, images, seg = _run(tmp_path, "mr_aniso_mask")
    wrong: NnUNetPreprocessor = MUTANTS[mutant](pre)
    with pytest.raises(AssertionError):
        _assert_same(ref, wrong.preprocess_case(images, seg))


def test_new_shape_rounds_as_nnunet():
    """``s / t · n``, in that order: ``n · s / t`` rounds 27.5 where nnU-Net rounds
    27.499999999999996 (33 voxels of 3.0 mm to 3.6 mm)."""
    resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    rng = np.random.default_rng(0)
    cases = [((33, 402, 594), (3.0, 1.5, 1.5), (3.6, 3.6, 3.6))]
    for shape in rng.integers(2, 600, size=(300, 3)).tolist():
        spacing = [float(np.float32(v)) for v in rng.choice([0.62, 0.8, 1.5, 3.0], 3)]
        cases.append((shape, spacing, [0.7, 1.0, 3.6]))
    for shape, spacing, target in cases:
        expected = resampling.compute_new_shape(shape, spacing, target)
        assert compute_new_shape(shape, spacing, target) == tuple(int(v) for v in expected)
    assert compute_new_shape(*cases[0]) == (27, 167, 247)


REGIONS = {
    "channel_names": {"0": "MR"},
    "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3},
    "regions_class_order": [1, 2, 3],
    "file_ending": ".nii.gz",
}


@pytest.mark.parametrize(
    ("name", "regions"),
    [
        ("ct_aniso", False),
        ("mr_aniso_mask", True),
        ("mr_two_channels_reorient", False),
        ("mr_2d_oblique", False),
    ],
)
def test_export_equals_nnunet(tmp_path, name, regions):
    """nnU-Net's export of float16 logits (what its predictor hands over) to the input's grid:
    the label file nnU-Net's writer produces, and its probabilities, equal segkit's."""
    export = pytest.importorskip("nnunetv2.inference.export_prediction")
    ref, pre, images, _ = _run(tmp_path, name, with_seg=False)
    data, _, props = ref
    _, _, ours = pre.preprocess_case(images, None)
    dataset_json = REGIONS if regions else json.loads((TEMPLATE / "dataset.json").read_text())
    k = 3
    rng = np.random.default_rng(7)
    logits = (rng.normal(0, 2, (k, *data.shape[1:])) + 0.5).astype(np.float16)
    logits[:, :, :3] = 0  # exact ties: argmax takes the first, a sigmoid of 0.5 is no region
    config = CASES[name][-1]
    plans = _plans(
        config,
        reader=pre.reader,
        transpose=pre.transpose_forward,
        spacing=pre.target_spacing,
        schemes=list(pre.normalization),
        mask=list(pre.use_mask_for_norm),
    )
    manager = plans_handler.PlansManager(plans)
    export.export_prediction_from_logits(
        torch.from_numpy(logits.copy()),
        copy.deepcopy(props),
        manager.get_configuration(config),
        manager,
        dataset_json,
        str(tmp_path / "nnunet"),
        save_probabilities=True,
        num_threads_torch=1,
    )
    written = nib.load(str(tmp_path / "nnunet.nii.gz"))
    order = dataset_json.get("regions_class_order")
    labels, probs = pre.export(logits, ours, regions_class_order=order, return_probabilities=True)
    assert labels.shape == nib.load(images[0]).shape
    np.testing.assert_array_equal(labels, np.asarray(written.dataobj))
    assert labels.dtype == written.get_data_dtype()
    assert len(np.unique(labels)) == (4 if regions else 3)  # every class somewhere
    np.testing.assert_allclose(written.affine, nib.load(images[0]).affine, atol=1e-5)
    np.testing.assert_array_equal(pre.export(logits, ours, regions_class_order=order), labels)
    if pre.reader != "NibabelIOWithReorient":  # nnU-Net's .npz keeps the reader's axis order
        expected = np.load(tmp_path / "nnunet.npz")["probabilities"].transpose(0, 3, 2, 1)
        np.testing.assert_array_equal(probs, expected)


def test_export_names_a_prediction_of_the_wrong_shape(tmp_path):
    _, pre, images, _ = _run(tmp_path, "ct_iso", with_seg=False)
    data, _, props = pre.preprocess_case(images, None)
    with pytest.raises(DataError, match=r"expected \(K, \*\(.*Fix: pass the prediction"):
        pre.export(np.zeros((3, *data.shape[1:-1], data.shape[-1] + 1), np.float32), props)
    with pytest.raises(DataError, match="regions_class_order has 2 entries"):
        pre.export(np.zeros((3, *data.shape[1:]), np.float32), props, regions_class_order=[1, 2])
