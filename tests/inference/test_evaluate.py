"""Dice and HD95 against hand-computed values; the evaluate command's CSV."""

from __future__ import annotations

import csv
import math

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from segkit.cli import main
from segkit.inference.evaluate import dice, hd95, score_case


def _surface_points(mask, spacing):
    from scipy import ndimage

    surf = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return np.argwhere(surf) * np.asarray(spacing)


def test_dice_values():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = True  # 64 voxels
    b[4:8, 2:6, 2:6] = True  # 64 voxels, 32 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))
    assert dice(a, np.zeros_like(a)) == 0.0


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
    expected = np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)
    assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-6)
    assert hd95(a, a, spacing) == 0.0
    assert math.isnan(hd95(a, np.zeros_like(a), spacing))


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
    rows = list(csv.DictReader(out.open()))
    assert [r["case"] for r in rows] == ["a", "b", "mean"]
    assert float(rows[0]["dice_1"]) == 1.0 and float(rows[0]["hd95_1"]) == 0.0
    # shifted by one voxel along x (1 mm): 4 of 5 slabs overlap → Dice 0.8, HD95 1 mm
    assert float(rows[1]["dice_1"]) == pytest.approx(0.8)
    assert float(rows[1]["hd95_1"]) == pytest.approx(1.0)
    assert float(rows[2]["dice_1"]) == pytest.approx(0.9)


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
