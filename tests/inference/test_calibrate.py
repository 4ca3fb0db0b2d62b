"""Choosing the inference setting by measurement: cheapest within tolerance of the best."""

from __future__ import annotations

import math

import pytest
import torch

from segkit.inference.calibrate import CalibrationRow, calibrate, choose
from segkit.inference.metrics.dice import case_dice, mean_dice
from segkit.nn import UNet


def _row(overlap, scale, dice, voxels):
    return CalibrationRow(overlap, scale, dice, (dice,), voxels, 1.0)


def test_choose_takes_the_cheapest_row_within_tolerance():
    rows = [
        _row(0.0, 1.0, 0.900, 100),
        _row(0.25, 1.0, 0.913, 200),
        _row(0.5, 1.0, 0.916, 400),
        _row(0.0, 1.5, 0.917, 300),
    ]
    assert choose(rows, 0.005) == 1  # 0.913 >= 0.917 - 0.005 and cheaper than 0.916 / 0.917
    assert choose(rows, 0.0) == 3  # only the best qualifies
    assert choose(rows, 0.1) == 0
    # equal cost: the more accurate one
    assert choose([_row(0.0, 1.0, 0.90, 100), _row(0.5, 1.0, 0.91, 100)], 0.05) == 1
    # no foreground anywhere (NaN Dice): every setting ties, the cheapest wins
    assert choose([_row(0.5, 1.0, math.nan, 400), _row(0.0, 1.0, math.nan, 100)], 0.0) == 1


def test_case_dice_and_its_mean_follow_one_convention():
    pred = torch.tensor([0, 1, 1, 2, 0, 0])
    ref = torch.tensor([0, 1, 2, 2, 0, 0])
    d = case_dice(pred, ref, 4)
    assert d[0].item() == pytest.approx(2 / 3) and d[1].item() == pytest.approx(2 / 3)
    assert math.isnan(d[2].item())  # class 3 absent from both
    per_case = torch.tensor([[1.0, math.nan], [0.5, math.nan], [math.nan, math.nan]])
    per_class, mean = mean_dice(per_case)
    assert per_class[0].item() == pytest.approx(0.75) and math.isnan(per_class[1].item())
    assert mean == pytest.approx(0.75)  # a class absent everywhere is left out


def test_calibrate_measures_every_setting_and_reports_cost():
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, depth=2, channels=4).eval()
    gen = torch.Generator().manual_seed(1)
    cases = []
    for i, size in enumerate([(30, 26, 20), (25, 31, 18)]):
        image = torch.randn(1, 1, *size, generator=gen)
        cases.append((f"c{i}", image, (image[0, 0] > 0.3).long()))
    seen = []

    def score(case_id, pred, label):
        seen.append(case_id)
        return case_dice(pred, label, 2)

    cal = calibrate(
        net,
        iter(cases),
        score,
        patch_size=(12, 12, 10),
        overlaps=(0.0, 0.5),
        window_scales=(1.0, 1.5),
        tolerance=1.0,  # everything qualifies: the cheapest must win
    )
    assert cal.cases == 2 and len(cal.rows) == 4 and sorted(set(seen)) == ["c0", "c1"]
    by = {(r.overlap, r.window_scale): r for r in cal.rows}
    assert by[(0.0, 1.0)].voxels < by[(0.5, 1.0)].voxels
    # 30×26×20 at window 12×12×10 and overlap 0: 3×3×2 windows; 25×31×18: 3×3×2
    assert by[(0.0, 1.0)].voxels == (18 + 18) * 12 * 12 * 10
    assert cal.best.voxels == min(r.voxels for r in cal.rows)
    assert cal.to_dict()["overlap"] == cal.best.overlap
    assert "←" in cal.table().splitlines()[2 + cal.chosen]
