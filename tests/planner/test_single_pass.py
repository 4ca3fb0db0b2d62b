"""One dataset fingerprint, read in one pass, shared by the planner and preprocessing.

The instrument is nibabel itself: ``nibabel.load`` is wrapped with a counter, so every read of
a file (header-only or full) is counted whatever segkit's own bookkeeping says. The ``ct``
statistics preprocessing uses are checked against numpy on the files' foreground voxels.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra.utils import instantiate

from segkit.config import compose
from segkit.planner import apply_planner

# Fewer than 10,000 foreground voxels per case: the statistics use every one of them.
CASES = [((20, 22, 18), (1.0, 1.0, 1.5), None), ((22, 20, 18), (1.0, 1.0, 1.5), None)] * 2


@pytest.fixture
def reads(monkeypatch) -> Counter:
    counts: Counter = Counter()
    real = nib.load

    def counting(filename, *args, **kwargs):
        counts[Path(filename).resolve()] += 1
        return real(filename, *args, **kwargs)

    monkeypatch.setattr(nib, "load", counting)
    return counts


def _ct_dataset(make_dataset) -> tuple[Path, list[Path]]:
    root = make_dataset(CASES)
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = {"0": "CT"}  # ct normalisation needs the dataset's intensity statistics
    (root / "dataset.json").write_text(json.dumps(meta))
    files = sorted(p.resolve() for d in ("imagesTr", "labelsTr") for p in (root / d).iterdir())
    return root, files


def _datamodule(root: Path, planner: bool):
    overrides = ["data=msd", f"data.root={root}", "data.num_workers=0", "model=unet"]
    cfg = compose(["planner=auto", *overrides] if planner else overrides)
    if planner:
        apply_planner(cfg, overrides, record=False)
    return instantiate(cfg.data)


def _foreground_stats(files: list[Path]) -> dict[str, float]:
    """0.5/99.5 % percentiles, mean and std of the image under label > 0, over all cases."""
    images = [f for f in files if f.parent.name == "imagesTr"]
    values = np.concatenate(
        [
            np.asarray(nib.load(str(f)).dataobj, np.float64)[
                np.asarray(nib.load(str(f.parent.parent / "labelsTr" / f.name)).dataobj) > 0
            ]
            for f in images
        ]
    )
    lower, upper = np.percentile(values, [0.5, 99.5])
    return {"lower": lower, "upper": upper, "mean": values.mean(), "std": values.std()}


def test_planner_auto_then_preprocessing_reads_each_file_once_for_statistics(make_dataset, reads):
    root, files = _ct_dataset(make_dataset)
    dm = _datamodule(root, planner=True)
    # start-up: the fingerprint pass, once per image and label file
    assert {f: reads[f] for f in files} == dict.fromkeys(files, 1)
    reads.clear()
    dm.prepare_data()
    pre = dm.preprocessor
    assert pre.normalization == ("ct",)
    # preprocessing reads each file once more, to preprocess it: no statistics pass of its own
    assert {f: reads[f] for f in files} == dict.fromkeys(files, 1)
    expected = _foreground_stats(files)
    got = pre.intensity_stats[0]
    for key, value in expected.items():
        assert getattr(got, key) == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_preprocessing_alone_computes_the_fingerprint_the_planner_then_reuses(make_dataset, reads):
    root, files = _ct_dataset(make_dataset)
    _datamodule(root, planner=False).prepare_data()
    # one statistics pass (the fingerprint) and one preprocessing pass per file
    assert {f: reads[f] for f in files} == dict.fromkeys(files, 2)
    reads.clear()
    dm = _datamodule(root, planner=True)
    assert dm.target_spacing is not None  # planned, from the fingerprint preprocessing saved
    assert sum(reads[f] for f in files) == 0
