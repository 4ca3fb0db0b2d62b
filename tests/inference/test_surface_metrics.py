"""NSD and HD95 against closed forms, MONAI and DeepMind's surface-distance; summary.json."""

from __future__ import annotations

import itertools
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from segkit.cli import main
from segkit.errors import ConfigError
from segkit.inference.metrics.dice import case_dice
from segkit.inference.metrics.evaluate import nsd_tolerances, score_case
from segkit.inference.metrics.surface import surface_scores, surfel_areas

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _onehot(labels: np.ndarray, k: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([labels == c for c in range(k)])[None])


def _monai(pred, ref, k, spacing, tolerances):
    """MONAI's Dice, HD95 and NSD (surface elements: use_subvoxels=True) per class 1..k-1."""
    p, r = _onehot(pred, k), _onehot(ref, k)
    dice = compute_dice(p, r, include_background=False)[0]
    hd = compute_hausdorff_distance(p, r, percentile=95, spacing=list(spacing))[0]
    nsd = compute_surface_dice(p, r, tolerances, spacing=list(spacing), use_subvoxels=True)[0]
    return dice.double().numpy(), hd.double().numpy(), nsd.double().numpy()


def _blobs(rng, shape, n):
    """``n`` random ellipsoids with scattered voxels: slanted, anisotropic, noisy surfaces."""
    z = np.ogrid[tuple(slice(0, s) for s in shape)]
    out = []
    for _ in range(n):
        c = [rng.uniform(0.35, 0.65) * s for s in shape]
        r = [rng.uniform(0.15, 0.3) * s for s in shape]
        m = sum(((zi - ci) / ri) ** 2 for zi, ci, ri in zip(z, c, r)) <= 1
        m |= rng.random(shape) > 0.997
        out.append(m)
    return out


def _box_surfels(lo, hi, spacing):
    """Corner points and areas of the marching-cubes surface of the voxel box [lo, hi).

    Written from the geometry, not from a lookup table: a corner on a face carries the
    face's cell (s_a·s_b), one on an edge along axis a the chamfer strip
    s_a·sqrt(s_b² + s_c²)/2, one on a box corner the triangle through three edge midpoints.
    """
    s = np.asarray(spacing, float)
    pts, areas = [], []
    for g in itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi))):
        extreme = [g[a] in (lo[a], hi[a]) for a in range(3)]
        m = sum(extreme)
        if m == 1:
            area = np.prod([s[a] for a in range(3) if not extreme[a]])
        elif m == 2:
            a = extreme.index(False)
            area = s[a] * math.hypot(*[s[b] for b in range(3) if b != a]) / 2
        elif m == 3:
            area = math.sqrt(s[0] ** 2 * s[1] ** 2 + s[0] ** 2 * s[2] ** 2 + s[1] ** 2 * s[2] ** 2)
            area /= 8
        else:
            continue
        pts.append(g)
        areas.append(area)
    return np.array(pts), np.array(areas)


def _concentric_boxes_nsd(lo, hi, grow, spacing, tol):
    """NSD of a box grown by ``grow`` voxels per side against the box: closed-form distances.

    An outer corner's nearest inner-surface point is its clamp onto the inner box; an inner
    corner's nearest outer-surface point is straight out through the nearest outer face.
    """
    s = np.asarray(spacing, float)
    olo, ohi = np.subtract(lo, grow), np.add(hi, grow)
    ip, ia = _box_surfels(lo, hi, spacing)
    op, oa = _box_surfels(tuple(olo), tuple(ohi), spacing)
    d_out = np.sqrt((((op - np.clip(op, lo, hi)) * s) ** 2).sum(1))
    d_in = np.minimum((ip - olo) * s, (ohi - ip) * s).min(1)
    return (ia[d_in <= tol].sum() + oa[d_out <= tol].sum()) / (ia.sum() + oa.sum())


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_nsd_of_concentric_cubes_by_hand():
    # Inner cube 6 voxels, outer 10 (2 voxels out on every side), 1 mm: every inner surfel
    # is 2 mm from the outer faces; within 2.1 mm of the inner cube lie only the outer
    # faces' (6+1)^2 corner points above an inner face (1 mm² each), the rest is >= sqrt(5).
    # Surface of a voxel cube of side n: 6(n-1)^2 face cells + 12(n-1) edge strips of
    # sqrt(2)/2 + 8 corner triangles of sqrt(3)/8.
    def area(n):
        return 6 * (n - 1) ** 2 + 6 * math.sqrt(2) * (n - 1) + math.sqrt(3)

    ref, pred = _box((14,) * 3, (4,) * 3, (10,) * 3), _box((14,) * 3, (2,) * 3, (12,) * 3)
    expected = (area(6) + 6 * 7**2) / (area(6) + area(10))
    assert expected == pytest.approx(0.643790, abs=1e-6)
    assert surface_scores(pred, ref, (1, 1, 1), 2.1).nsd == pytest.approx(expected, rel=1e-12)
    assert surface_scores(pred, ref, (1, 1, 1), 1.9).nsd == 0.0  # nothing within 2 mm
    assert surface_scores(pred, ref, (1, 1, 1), 2 * math.sqrt(3)).nsd == pytest.approx(1.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.9)])
def test_nsd_of_concentric_boxes_closed_form(spacing):
    lo, hi, grow = (3, 4, 2), (9, 8, 7), (1, 2, 1)
    shape = (13, 13, 10)
    ref, pred = _box(shape, lo, hi), _box(shape, np.subtract(lo, grow), np.add(hi, grow))
    s = np.asarray(spacing)
    levels = sorted({float(np.hypot.reduce(np.array(v) * s)) for v in np.ndindex(4, 4, 4)})
    # tolerances between consecutive distance levels: no float ties in this test
    tolerances = [0.5 * (a + b) for a, b in zip(levels, levels[1:])][:14]
    for tol in tolerances:
        expected = _concentric_boxes_nsd(lo, hi, grow, spacing, tol)
        got = surface_scores(pred, ref, spacing, tol).nsd
        assert got == pytest.approx(expected, abs=1e-12), tol
    assert surface_scores(pred, ref, spacing, 0.99 * min(np.multiply(grow, s))).nsd == 0
    assert surface_scores(pred, ref, spacing, float(np.hypot.reduce(grow * s))).nsd == 1


def test_nsd_of_concentric_balls_is_one_within_the_gap():
    # Balls of radius 9 and 12 voxels (0.5 x 0.8 x 1.2 mm): the surfaces are 3 voxels apart
    # along every direction, so NSD is 1 at 3 voxels of the coarsest axis (3.6 mm) and far
    # from 1 at 2 voxels of the finest (1 mm).
    spacing = np.array([0.5, 0.8, 1.2])
    z = np.ogrid[:32, :32, :32]
    r2 = sum((zi - 15.5) ** 2 for zi in z)
    ref, pred = r2 <= 9**2, r2 <= 12**2
    assert surface_scores(pred, ref, spacing, 3.0 * spacing.max()).nsd == 1.0
    assert surface_scores(pred, ref, spacing, 2.0 * spacing.min()).nsd < 0.1


def test_surfel_table_is_deepminds():
    from surface_distance import lookup_tables as lookup  # DeepMind's, installed by make test

    for spacing in [(1.0, 1.0, 1.0), (0.7, 1.3, 2.9)]:
        theirs = lookup.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(surfel_areas(spacing), theirs, rtol=1e-12)


def _pairs(seed, n=5, shape=(26, 22, 18)):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        a, b = _blobs(rng, shape, 2)
        yield a, b


@pytest.mark.parametrize(
    "spacing,tol",
    [
        ((1.0, 1.0, 1.0), 1.0),
        ((0.5, 1.0, 2.0), 1.0),
        ((0.8, 1.3, 2.5), 1.7),
        ((2.0, 0.6, 0.6), 1.8),
    ],
)
def test_nsd_and_hd95_agree_with_monai(spacing, tol):
    # tol = 1 mm at 1 mm spacing puts many distances exactly on the tolerance: they must
    # count as matched (d <= tol), as in MONAI and DeepMind.
    for a, b in _pairs(int(tol * 10)):
        ours = surface_scores(a, b, spacing, tol)
        _, hd, nsd = _monai(a.astype(np.int64), b.astype(np.int64), 2, spacing, [tol])
        assert ours.nsd == pytest.approx(nsd[0], abs=1e-6)
        assert ours.hd95 == pytest.approx(hd[0], abs=1e-3)


@pytest.mark.parametrize(
    "spacing,tol", [((1.0, 1.0, 1.0), 1.0), ((0.8, 1.3, 2.5), 1.7), ((2.0, 0.6, 0.6), 1.8)]
)
def test_nsd_agrees_with_deepmind_surface_distance(spacing, tol):
    import surface_distance as sd

    for a, b in _pairs(7):
        theirs = sd.compute_surface_dice_at_tolerance(
            sd.compute_surface_distances(b, a, spacing), tol
        )
        assert surface_scores(a, b, spacing, tol).nsd == pytest.approx(theirs, abs=1e-9)


def test_empty_masks_conventions_match_monai():
    # both empty: NaN (nothing to score, left out of means); one empty: NSD 0, HD95 NaN
    # (MONAI says inf or nan with a warning; segkit leaves it out of the HD95 mean).
    empty, blob = np.zeros((8, 8, 8), bool), _box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    both = surface_scores(empty, empty, (1, 1, 1), 1.0)
    assert math.isnan(both.nsd) and math.isnan(both.hd95)
    for pred, ref in [(empty, blob), (blob, empty)]:
        s = surface_scores(pred, ref, (1, 1, 1), 1.0)
        assert s.nsd == 0.0 and math.isnan(s.hd95)
        _, hd, nsd = _monai(pred.astype(np.int64), ref.astype(np.int64), 2, (1, 1, 1), [1.0])
        assert nsd[0] == 0.0 and not math.isfinite(hd[0])
    _, _, nsd = _monai(empty.astype(np.int64), empty.astype(np.int64), 2, (1, 1, 1), [1.0])
    assert math.isnan(nsd[0])


def test_score_case_per_class_agrees_with_monai():
    # 5 classes in a label map; class 3 only in the reference, class 4 in neither; one
    # tolerance per class. Each class is cropped to its own box before surface work.
    rng = np.random.default_rng(3)
    shape, spacing, tol = (40, 30, 24), (0.9, 1.1, 2.2), [1.0, 2.5, 1.5, 1.0]
    pred, ref = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for c, (a, b) in enumerate(zip(_blobs(rng, shape, 2), _blobs(rng, shape, 2)), start=1):
        pred[a], ref[b] = c, c
    ref[2:6, 2:6, 2:5] = 3
    s = score_case(pred, ref, num_classes=5, spacing=spacing, nsd_tolerance=tol)
    dice, hd, nsd = _monai(pred, ref, 5, spacing, tol)
    np.testing.assert_allclose(s.dice, dice, atol=1e-6)
    np.testing.assert_allclose(s.nsd, nsd, atol=1e-6)
    np.testing.assert_allclose(s.hd95[:2], hd[:2], atol=1e-3)
    assert s.nsd[2] == 0.0 and math.isnan(s.hd95[2]) and math.isnan(s.nsd[3])


def test_score_case_dice_is_validations_to_the_bit():
    rng = np.random.default_rng(11)
    for dtype in (np.uint8, np.int64):
        pred = rng.integers(0, 4, (20, 17, 9)).astype(dtype)
        ref = np.where(rng.random(pred.shape) > 0.3, pred, rng.integers(0, 5, pred.shape))
        ref = ref.astype(dtype)
        pred[pred == 2] = 0  # class 2 only in the reference
        s = score_case(pred, ref, num_classes=6, spacing=(1, 1, 1))
        val = case_dice(torch.from_numpy(pred), torch.from_numpy(ref), 6).tolist()
        assert s.dice[1] == 0.0 and math.isnan(s.dice[4]) and math.isnan(val[4])
        assert s.dice[:4] == tuple(val[:4])  # exact


def test_nsd_tolerance_errors():
    assert nsd_tolerances(2, 4) == [2.0, 2.0, 2.0]
    assert nsd_tolerances([1, 2, 3], 4) == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="2 values for 3 foreground classes"):
        nsd_tolerances([1, 2], 4)
    with pytest.raises(ConfigError, match="finite values >= 0 mm"):
        nsd_tolerances(-1, 3)


def _no_nan(word):
    raise AssertionError(f"{word} is not JSON; expected null")


def test_evaluate_writes_summary_json(tmp_path, capsys):
    rng = np.random.default_rng(5)
    spacing = (0.8, 1.0, 2.5)
    shape = (30, 26, 14)
    arrays = {}
    for name in ("a", "b", "c"):
        ref, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        for c, (x, y) in enumerate(zip(_blobs(rng, shape, 2), _blobs(rng, shape, 2)), start=1):
            ref[x], pred[y] = c, c
        arrays[name] = pred, ref
        folders = [("labels", ref)] + ([("pred", pred)] if name != "c" else [])
        for folder, data in folders:
            (tmp_path / folder).mkdir(exist_ok=True)
            img = nib.Nifti1Image(data, np.diag([*spacing, 1.0]))
            nib.save(img, str(tmp_path / folder / f"{name}.nii.gz"))
    args = ["evaluate", f"pred={tmp_path / 'pred'}", f"labels={tmp_path / 'labels'}"]
    assert main([*args, "nsd_tolerance=[1.0,2.0]", f"output={tmp_path / 's.csv'}"]) == 0
    assert "nsd_mean" in capsys.readouterr().out
    path = tmp_path / "pred" / "summary.json"
    data = json.loads(path.read_text(), parse_constant=_no_nan)  # NaN is written as null
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.nii.gz", "b.nii.gz", path.name]
    assert [c["case"] for c in data["metric_per_case"]] == ["a", "b", "c"]
    assert data["nsd_tolerance_mm"] == {"1": 1.0, "2": 2.0}
    missing = data["metric_per_case"][2]
    assert missing["prediction_file"] is None and missing["status"] == "no prediction (failure)"
    assert missing["metrics"]["1"] == {"Dice": 0.0, "HD95": None, "NSD": 0.0}
    per_case = []
    for entry in data["metric_per_case"]:
        pred, ref = arrays[entry["case"]]
        if entry["prediction_file"] is None:
            pred = np.zeros_like(pred)
        assert entry["reference_file"].endswith(f"labels/{entry['case']}.nii.gz")
        expected = _monai(pred.astype(np.int64), ref.astype(np.int64), 3, spacing, [1.0, 2.0])
        for label in ("1", "2"):
            got = entry["metrics"][label]
            row = [got["Dice"], got["HD95"], got["NSD"]]
            want = [float(m[int(label) - 1]) for m in expected]
            want[1] = want[1] if math.isfinite(want[1]) else None
            if row[1] is None:
                assert want[1] is None
                row[1] = want[1] = 0.0
            np.testing.assert_allclose(row, want, atol=1e-3)
        per_case.append([[entry["metrics"][k][m] for k in ("1", "2")] for m in ("Dice", "NSD")])
    per_case = np.array(per_case, float)  # case, metric, label
    for i, m in enumerate(("Dice", "NSD")):
        means = per_case[:, i].mean(0)
        assert [data["mean"][k][m] for k in ("1", "2")] == pytest.approx(list(means))
        assert data["foreground_mean"][m] == pytest.approx(means.mean())
    hd = [[e["metrics"][k]["HD95"] for k in ("1", "2")] for e in data["metric_per_case"][:2]]
    assert data["mean"]["1"]["HD95"] == pytest.approx(np.mean([h[0] for h in hd]))


def test_evaluate_summary_path_and_bad_tolerance(tmp_path, capsys):
    for folder in ("pred", "labels"):
        (tmp_path / folder).mkdir()
        m = _box((6, 6, 6), (1, 1, 1), (4, 4, 4)).astype(np.uint8)
        nib.save(nib.Nifti1Image(m, np.eye(4)), str(tmp_path / folder / "x.nii.gz"))
    out = tmp_path / "deep" / "summary.json"
    args = ["evaluate", f"pred={tmp_path / 'pred'}", f"labels={tmp_path / 'labels'}"]
    assert main([*args, f"summary={out}"]) == 0
    case = json.loads(out.read_text())["metric_per_case"][0]["metrics"]["1"]
    assert case == {"Dice": 1.0, "HD95": 0.0, "NSD": 1.0}
    assert not (tmp_path / "pred" / "summary.json").exists()
    assert main([*args, "nsd_tolerance=-1"]) == 2
    assert "nsd_tolerance=[-1]" in capsys.readouterr().err
