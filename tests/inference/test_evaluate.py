"""Dice and HD95 against hand-computed values and MONAI; the evaluate command's CSV."""

from __future__ import annotations

import csv
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance as monai_hd
from scipy.spatial.distance import cdist

from segkit.cli import main
from segkit.inference.metrics.dice import mean_dice
from segkit.inference.metrics.evaluate import CaseScores, hd95, score_case, summary_rows


def _surface_points(mask, spacing):
    from scipy import ndimage

    surf = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return np.argwhere(surf) * np.asarray(spacing)


def test_dice_values():
    a = np.zeros((10, 10, 10), np.int64)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = 1  # 64 voxels
    b[4:8, 2:6, 2:6] = 1  # 64 voxels, 32 shared
    b[0, 0, 0] = 3  # class 3 only in the reference, class 2 in neither
    d = score_case(a, b, num_classes=4, spacing=(1, 1, 1)).dice
    assert d[0] == pytest.approx(0.5) and math.isnan(d[1]) and d[2] == 0.0


def test_hd95_matches_brute_force():
    rng = np.random.default_rng(0)
    spacing = (0.8, 1.3, 2.5)
    a = np.zeros((14, 12, 9), bool)
    b = np.zeros_like(a)
    a[3:9, 2:8, 2:6] = True
    b[4:11, 3:9, 3:7] = True
    b[rng.random(b.shape) > 0.97] = True
    pa, pb = _surface_points(a, spacing), _surface_points(b, spacing)
    d = cdist(pa, pb)
    expected = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
    assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-6)
    assert hd95(a, a, spacing) == 0.0
    assert math.isnan(hd95(a, np.zeros_like(a), spacing))


def test_hd95_is_the_larger_directed_percentile():
    # Along one row of voxels (every voxel is surface): the reference is voxels 0..9, the
    # prediction the same plus voxel 19, 10 voxels = 25 mm away. prediction→reference
    # distances are ten 0s and one 25: the 95th percentile (linear, index 9.5) is 12.5;
    # reference→prediction are all 0. Pooled, the twenty 0s put the percentile at 0.
    ref = np.zeros((1, 1, 20), bool)
    ref[0, 0, :10] = True
    pred = ref.copy()
    pred[0, 0, 19] = True
    assert hd95(pred, ref, (1.0, 1.0, 2.5)) == pytest.approx(12.5)
    assert hd95(ref, pred, (1.0, 1.0, 2.5)) == pytest.approx(12.5)  # symmetric
    assert np.percentile([0.0] * 20 + [25.0], 95) == 0.0  # what pooling would report


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside MONAI 1.6
def test_hd95_agrees_with_monai():
    # pooling both directions would give 3.24 mm instead of MONAI's 3.70 mm in trial 0
    rng = np.random.default_rng(1)
    spacing = (0.8, 1.3, 2.5)
    for trial in range(4):
        a = np.zeros((18, 16, 11), bool)
        b = np.zeros_like(a)
        a[3:12, 2:10, 2:8] = True
        b[5:14, 4:12, 3:9] = True
        a[rng.random(a.shape) > 0.97] = True  # scattered voxels make the two directions differ
        b[rng.random(b.shape) > 0.985 - 0.01 * trial] = True
        onehot = [torch.from_numpy(np.stack([~m, m])[None]) for m in (a, b)]
        expected = float(monai_hd(*onehot, percentile=95, spacing=list(spacing))[0, 0])
        assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-5)


def test_mean_row_is_validations_mean_dice():
    # class 2 is absent from case b (NaN): averaging each case's mean first gives
    # (0.5 + 1.0) / 2 = 0.75; validation's convention (per class over cases, then over
    # classes) gives ((0.5 + 1.0) / 2 + 0.5) / 2 = 0.625.
    nan = math.nan
    scores = [
        CaseScores("a", dice=(0.5, 0.5), hd95=(1.0, 3.0)),
        CaseScores("b", dice=(1.0, nan), hd95=(2.0, nan)),
    ]
    header, rows = summary_rows(scores)
    mean = dict(zip(header, rows[-1]))
    assert mean["case"] == "mean" and float(mean["dice_1"]) == 0.75
    _, val_mean = mean_dice(torch.tensor([s.dice for s in scores]))
    assert float(mean["dice_mean"]) == pytest.approx(val_mean) == pytest.approx(0.625)
    assert float(mean["hd95_mean"]) == pytest.approx((1.5 + 3.0) / 2)
    assert dict(zip(header, rows[1]))["dice_mean"] == "1.0000"  # a case's own mean


def test_score_case_classes():
    ref = np.zeros((8, 8, 8), np.int64)
    ref[1:4] = 1
    ref[5:7] = 2
    pred = ref.copy()
    pred[6] = 0
    s = score_case(pred, ref, num_classes=4, spacing=(1, 1, 1))
    assert s.dice[0] == 1.0 and s.dice[1] == pytest.approx(2 * 64 / (64 + 128))
    assert math.isnan(s.dice[2])  # class 3 absent in both


def test_evaluate_command_writes_csv(tmp_path, capsys):
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    for name, shift in [("a", 0), ("b", 1)]:
        ref = np.zeros((12, 10, 8), np.uint8)
        ref[2:7, 2:7, 2:6] = 1
        ref[8:11, 1:4, 1:3] = 2
        pred = np.roll(ref, shift, axis=0)
        for folder, data in (("labels", ref), ("pred", pred)):
            (tmp_path / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), str(tmp_path / folder / f"{name}.nii.gz"))
    out = tmp_path / "scores.csv"
    assert (
        main(
            [
                "evaluate",
                f"pred={tmp_path / 'pred'}",
                f"labels={tmp_path / 'labels'}",
                f"output={out}",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "dice_1" in printed and "hd95_mean" in printed
    assert "no prediction" not in printed
    rows = list(csv.DictReader(out.open()))
    assert [r["case"] for r in rows] == ["a", "b", "mean"]
    assert [r["status"] for r in rows] == ["ok", "ok", "2 cases"]
    assert float(rows[0]["dice_1"]) == 1.0 and float(rows[0]["hd95_1"]) == 0.0
    # shifted by one voxel along x (1 mm): 4 of 5 slabs overlap → Dice 0.8, HD95 1 mm
    assert float(rows[1]["dice_1"]) == pytest.approx(0.8)
    assert float(rows[1]["hd95_1"]) == pytest.approx(1.0)
    assert float(rows[2]["dice_1"]) == pytest.approx(0.9)


def test_reference_without_prediction_is_a_failure(tmp_path, capsys):
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    ref = np.zeros((12, 10, 8), np.uint8)
    ref[2:7, 2:7, 2:6] = 1
    ref[8:11, 1:4, 1:3] = 2
    for folder, names in (("labels", "abc"), ("pred", "ab")):
        (tmp_path / folder).mkdir()
        for name in names:
            nib.save(nib.Nifti1Image(ref, affine), str(tmp_path / folder / f"{name}.nii.gz"))
    out = tmp_path / "scores.csv"
    args = [f"pred={tmp_path / 'pred'}", f"labels={tmp_path / 'labels'}", f"output={out}"]
    assert main(["evaluate", *args]) == 0
    printed = capsys.readouterr().out
    assert "1 of 3 reference case(s) have no prediction: c; counted as failures" in printed
    rows = {r["case"]: r for r in csv.DictReader(out.open())}
    assert rows["c"]["status"] == "no prediction (failure)"
    assert (rows["c"]["dice_1"], rows["c"]["dice_2"]) == ("0.0000", "0.0000")
    assert rows["mean"]["status"] == "3 cases, 1 without prediction"
    assert float(rows["mean"]["dice_mean"]) == pytest.approx(2 / 3, abs=1e-4)  # not 1.0


def test_evaluate_missing_reference(tmp_path, capsys):
    for folder in ("pred", "labels"):
        (tmp_path / folder).mkdir()
    nib.save(
        nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)),
        str(tmp_path / "pred" / "x.nii.gz"),
    )
    nib.save(
        nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)),
        str(tmp_path / "labels" / "y.nii.gz"),
    )
    assert main(["evaluate", f"pred={tmp_path / 'pred'}", f"labels={tmp_path / 'labels'}"]) == 2
    assert "no reference for predicted case(s) ['x']" in capsys.readouterr().err
