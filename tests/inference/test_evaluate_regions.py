"""`segkit evaluate` on a region dataset (BraTS): regions read from the dataset.json beside
the labels, scored on region masks of both label maps, written to summary.json."""

from __future__ import annotations

import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

from segkit.cli import main
from segkit.inference.metrics.evaluate import evaluate, summary, summary_rows

REGIONS = {"whole": (1, 2, 3), "core": (2, 3), "enh": (3,)}
SPACING = (1.0, 1.5, 2.0)


def _tumour(shape, centre, radii):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return (((grid - centre) / radii) ** 2).sum(-1)


def _maps(shift=(0, 0, 0)):
    d = _tumour((30, 26, 20), np.array([15, 13, 10]) + shift, np.array([9, 7, 6]))
    label = np.zeros(d.shape, np.uint8)
    label[d <= 1] = 1
    label[d <= 0.4] = 3
    label[d <= 0.15] = 2
    return label


def _dataset(tmp_path):
    root = tmp_path / "Dataset"
    ref = [_maps(), _maps((1, 0, -1))]
    pred = [_maps((1, 1, 0)), _maps((1, 0, -1))]
    pred[1][pred[1] == 2] = 3  # case 1: necrosis predicted as enhancing (core still right)
    affine = np.diag([*SPACING, 1.0])
    for sub, arrays in (("labelsTr", ref), ("pred", pred), ("imagesTr", ref)):
        (root / sub).mkdir(parents=True)
        for i, arr in enumerate(arrays):
            name = f"c{i}_0000.nii.gz" if sub == "imagesTr" else f"c{i}.nii.gz"
            nib.save(
                nib.Nifti1Image(arr.astype(np.float32 if sub == "imagesTr" else np.uint8), affine),
                str(root / sub / name),
            )
    meta = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, **{k: list(v) for k, v in REGIONS.items()}},
        "regions_class_order": [1, 2, 3],
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root, pred, ref


def test_regions_are_scored_from_the_dataset_json_beside_the_labels(tmp_path):
    root, pred, ref = _dataset(tmp_path)
    scores = evaluate(pred=root / "pred", labels=root / "labelsTr", nsd_tolerance=1.0)
    for s, p, r in zip(scores, pred, ref):
        assert [x[0] for x in s.regions] == list(REGIONS)
        for (name, dice, hd, nsd), values in zip(s.regions, REGIONS.values()):
            pm, rm = np.isin(p, values), np.isin(r, values)
            # Dice by hand; HD95 and NSD from MONAI on the region masks
            hand = 2 * np.count_nonzero(pm & rm) / (np.count_nonzero(pm) + np.count_nonzero(rm))
            assert dice == hand, name
            pt, rt = (torch.from_numpy(np.stack([~m, m])[None]) for m in (pm, rm))
            theirs_hd = compute_hausdorff_distance(pt, rt, percentile=95, spacing=list(SPACING))
            theirs_nsd = compute_surface_dice(
                pt, rt, [1.0], spacing=list(SPACING), use_subvoxels=True
            )
            assert hd == pytest.approx(float(theirs_hd), abs=1e-3), name
            assert nsd == pytest.approx(float(theirs_nsd), abs=1e-3), name
    # case 1: the core and the whole tumour are exact; enhancing is not
    assert scores[1].regions[0][1] == 1.0 and scores[1].regions[1][1] == 1.0
    assert scores[1].regions[2][1] < 1.0

    out = summary(scores, nsd_tolerance=1.0)
    assert set(out["region_mean"]) == set(REGIONS)
    case0 = out["metric_per_case"][0]["region_metrics"]
    assert case0["core"]["Dice"] == scores[0].regions[1][1]
    mean_enh = (scores[0].regions[2][1] + scores[1].regions[2][1]) / 2
    assert out["region_mean"]["enh"]["Dice"] == pytest.approx(mean_enh, abs=1e-12)
    region_means = [out["region_mean"][k]["Dice"] for k in REGIONS]
    assert out["region_foreground_mean"]["Dice"] == pytest.approx(np.mean(region_means))
    # the labels are scored as well, as for any dataset
    assert set(out["mean"]) == {"1", "2", "3"}
    header, rows = summary_rows(scores)
    assert header[-4:] == ["dice_whole", "dice_core", "dice_enh", "dice_regions_mean"]
    assert rows[-1][-1] == f"{out['region_foreground_mean']['Dice']:.4f}"


def test_a_missing_prediction_scores_zero_for_every_region_in_the_reference(tmp_path):
    root, _, _ = _dataset(tmp_path)
    (root / "pred" / "c1.nii.gz").unlink()
    scores = evaluate(pred=root / "pred", labels=root / "labelsTr")
    assert scores[1].missing
    assert [r[1] for r in scores[1].regions] == [0.0, 0.0, 0.0]
    assert all(math.isnan(r[2]) for r in scores[1].regions)  # no finite HD95


def test_plain_datasets_have_no_region_entries(tmp_path):
    root, _, _ = _dataset(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "oedema": 1, "necrosis": 2, "enhancing": 3}
    del meta["regions_class_order"]
    (root / "dataset.json").write_text(json.dumps(meta))
    scores = evaluate(pred=root / "pred", labels=root / "labelsTr")
    assert all(s.regions == () for s in scores)
    out = summary(scores, nsd_tolerance=1.0)
    assert "region_mean" not in out and "region_metrics" not in out["metric_per_case"][0]


def test_only_the_labels_of_the_dataset_json_are_needed(tmp_path):
    root, _, _ = _dataset(tmp_path)
    shutil.rmtree(root / "imagesTr")  # a dataset with its images elsewhere
    scores = evaluate(pred=root / "pred", labels=root / "labelsTr")
    assert [r[0] for r in scores[0].regions] == list(REGIONS)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda text: text[:-1], "invalid JSON"),
        (
            lambda text: text.replace(
                '"regions_class_order": [1, 2, 3]', '"regions_class_order": [1, 2]'
            ),
            "'regions_class_order' has 2 entries for 3 regions",
        ),
    ],
    ids=["truncated", "invalid-regions"],
)
def test_an_unusable_dataset_json_beside_the_labels_stops_evaluate(tmp_path, capsys, edit, problem):
    """Not scored as plain labels: the file and what is wrong with it, in one line."""
    root, _, _ = _dataset(tmp_path)
    path = root / "dataset.json"
    path.write_text(edit(path.read_text()))
    assert main(["evaluate", f"pred={root / 'pred'}", f"labels={root / 'labelsTr'}"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"segkit evaluate: error: labels={root / 'labelsTr'}: the dataset.json")
    assert f"{path}: " in line and problem in line and "Fix: " in line
    assert captured.out == "" and not (root / "pred" / "summary.json").exists()
