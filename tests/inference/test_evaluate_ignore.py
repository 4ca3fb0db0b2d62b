"""`segkit evaluate` on sparse references: voxels marked with the ignore label count for
nothing (nnU-Net's convention), read from the dataset.json beside the labels folder."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np

from segkit.inference.metrics.evaluate import evaluate


def _hand_dice(pred, ref, c, ignore):
    keep = ref != ignore
    p, r = (pred == c) & keep, (ref == c) & keep
    return 2 * np.count_nonzero(p & r) / (np.count_nonzero(p) + np.count_nonzero(r))


def _dataset(tmp_path, ignore=3):
    rng = np.random.default_rng(0)
    ref = np.zeros((20, 18, 16), np.uint8)
    ref[4:12, 3:11, 2:9] = 1
    ref[12:17, 10:16, 8:14] = 2
    pred = ref.copy()
    pred[rng.random(ref.shape) < 0.05] = 1  # scattered false positives everywhere
    pred[5:8, 4:7, 3:5] = 0  # a hole
    ref_sparse = ref.copy()
    ref_sparse[:, :, 10:] = ignore  # slices 10.. unannotated (class 2 mostly hidden)
    root = tmp_path / "Dataset"
    for sub, arr in (("labelsTr", ref_sparse), ("pred", pred)):
        (root / sub).mkdir(parents=True)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(root / sub / "case_000.nii.gz"))
    meta = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "a": 1, "b": 2, "ignore": ignore},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "imagesTr").mkdir()
    nib.save(
        nib.Nifti1Image(np.zeros(ref.shape, np.float32), np.eye(4)),
        str(root / "imagesTr" / "case_000_0000.nii.gz"),
    )
    return root, pred, ref_sparse


def test_ignored_voxels_count_for_nothing(tmp_path):
    root, pred, ref = _dataset(tmp_path)
    (s,) = evaluate(pred=root / "pred", labels=root / "labelsTr")  # ignore read from json
    assert len(s.dice) == 2  # the ignore value is not a class
    for c in (1, 2):
        assert math.isclose(s.dice[c - 1], _hand_dice(pred, ref, c, 3), rel_tol=1e-12)
    # surfaces are unknown where annotation stops: no HD95/NSD for a sparse case
    assert all(math.isnan(v) for v in (*s.hd95, *s.nsd))


def test_without_the_ignore_label_the_ignored_voxels_would_be_false_positives(tmp_path):
    root, pred, ref = _dataset(tmp_path)
    (s,) = evaluate(pred=root / "pred", labels=root / "labelsTr", ignore_label=3)
    (naive,) = evaluate(pred=root / "pred", labels=root / "labelsTr", ignore_label=-1)
    assert len(naive.dice) == 3  # 3 scored as a class when nothing says it is ignored
    assert naive.dice[0] < s.dice[0]  # the FPs under the ignore now count against class 1
