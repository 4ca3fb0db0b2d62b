"""``segkit cv`` / ``segkit select`` / ``segkit predict ckpt=<decision>`` on a real tiny CV.

References are built in the tests, not read from the code under test: the dataset's own
``dataset.json`` and label files, ``segkit evaluate`` on the out-of-fold folder, Dice,
ensembles (argmax of averaged probabilities) and largest connected components computed
here with numpy/scipy, and ``predict`` run by hand with the checkpoints of the folds.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from segkit.inference.predict.postprocess import apply_postprocessing
from segkit.inference.predict.run import PredictOptions, predict
from tests.crossval.conftest import run_segkit

pytestmark = pytest.mark.filterwarnings("ignore")
STEPS = ("largest_foreground", "largest_per_class")
NUM_CLASSES = 4  # the demo: background + 3


def _training(root: Path) -> dict[str, tuple[Path, Path]]:
    meta = json.loads((root / "dataset.json").read_text())
    return {
        Path(e["image"]).name.removesuffix(".nii.gz"): (root / e["image"], root / e["label"])
        for e in meta["training"]
    }


def _splits(root: Path) -> list[dict]:
    (path,) = (root / "segkit_cache").rglob("splits.json")
    return json.loads(path.read_text())


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).astype(np.int64)


def _dice(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    out = []
    for c in range(1, NUM_CLASSES):
        p, r = pred == c, ref == c
        total = p.sum() + r.sum()
        out.append(math.nan if total == 0 else 2 * (p & r).sum() / total)
    return np.array(out)


def _cv_mean(rows) -> float:
    """Per class the mean over cases (NaN left out), then the mean over classes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every case
        per_class = np.nanmean(np.stack(rows), axis=0)
    return float(np.mean(per_class[~np.isnan(per_class)]))


def _largest(mask: np.ndarray) -> np.ndarray:
    comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return mask
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return comp == sizes.argmax()


def _post(seg: np.ndarray, steps) -> np.ndarray:
    seg = seg.copy()
    for step in steps:
        if step == "largest_foreground":
            seg[~_largest(seg > 0)] = 0
        else:
            for c in range(1, NUM_CLASSES):
                seg[(seg == c) & ~_largest(seg == c)] = 0
    return seg


def _decision(cv_run) -> dict:
    return json.loads((cv_run.selection / "decision.json").read_text())


def test_out_of_fold_predictions_cover_every_training_case(cv_run, tmp_path):
    training = _training(cv_run.root)
    assert len(training) == 6
    for cv in cv_run.cvs.values():
        oof = cv / "oof"
        assert sorted(p.name for p in oof.glob("*.nii.gz")) == sorted(
            f"{c}.nii.gz" for c in training
        )
        for case, (image, _) in training.items():
            img, pred = nib.load(str(image)), nib.load(str(oof / f"{case}.nii.gz"))
            assert pred.shape == img.shape[:3]  # the original grid
            np.testing.assert_allclose(pred.affine, img.affine, atol=1e-4)
            probs = np.load(oof / f"{case}.npz")["probabilities"].astype(np.float32)
            assert probs.shape == (NUM_CLASSES, *img.shape[:3])
            np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-2)
    # every case predicted by the fold that validated on it, with that fold's checkpoint
    splits = _splits(cv_run.root)
    assert sorted(c for f in splits for c in f["val"]) == sorted(training)
    cv = cv_run.cvs["plain"]
    for k, fold in enumerate(splits):
        assert set(fold["val"]).isdisjoint(fold["train"])
        inputs = tmp_path / f"in{k}"
        inputs.mkdir()
        for case in fold["val"]:
            shutil.copy(training[case][0], inputs)
        ckpt = cv / "folds" / f"fold_{k}" / "checkpoints" / "best.ckpt"
        opts = PredictOptions(progress=False, device="cpu")
        predict(ckpt=ckpt, input=inputs, output=tmp_path / f"out{k}", options=opts)
        for case in fold["val"]:
            by_hand = _load(tmp_path / f"out{k}" / f"{case}.nii.gz")
            assert np.array_equal(by_hand, _load(cv / "oof" / f"{case}.nii.gz")), (k, case)


def test_summary_mean_equals_segkit_evaluate(cv_run, tmp_path):
    for name, cv in cv_run.cvs.items():
        ref = tmp_path / f"{name}.json"
        args = (f"pred={cv / 'oof'}", f"labels={cv_run.root / 'labelsTr'}", f"summary={ref}")
        assert run_segkit("evaluate", *args) == 0
        ours, theirs = (json.loads(p.read_text()) for p in (cv / "summary.json", ref))
        assert theirs["num_cases"] == ours["num_cases"] == 6
        for metric in ("Dice", "HD95", "NSD"):
            assert abs(ours["foreground_mean"][metric] - theirs["foreground_mean"][metric]) <= 1e-6
            for label in theirs["mean"]:
                a, b = ours["mean"][label][metric], theirs["mean"][label][metric]
                assert (a is None and b is None) or abs(a - b) <= 1e-6
        cv_info = ours["crossval"]
        assert cv_info["complete"] and cv_info["missing_or_failed"] == []
        assert [f["status"] for f in cv_info["folds"]] == ["ok"] * 3


def test_selection_and_postprocessing_follow_the_cv_numbers(cv_run):
    decision = _decision(cv_run)
    names = list(cv_run.cvs)
    training = _training(cv_run.root)
    refs = {c: _load(label) for c, (_, label) in training.items()}
    segs = {n: {c: _load(cv_run.cvs[n] / "oof" / f"{c}.nii.gz") for c in training} for n in names}

    def labels(members, case):
        if len(members) == 1:
            return segs[members[0]][case]
        probs = [
            np.load(cv_run.cvs[n] / "oof" / f"{case}.npz")["probabilities"].astype(np.float32)
            for n in members
        ]
        return np.argmax(np.mean(probs, axis=0), axis=0)

    candidates = [(names[0],), (names[1],), tuple(names)]
    scores = {m: _cv_mean([_dice(labels(m, c), refs[c]) for c in training]) for m in candidates}
    reported = {tuple(s["configurations"]): s["cv_dice"] for s in decision["candidates"]}
    assert set(reported) == set(candidates)
    for m in candidates:
        assert reported[m] == pytest.approx(scores[m], abs=1e-9), m
    # a single configuration's score is its summary's (segkit evaluate's) mean Dice
    for n in names:
        summary = json.loads((cv_run.cvs[n] / "summary.json").read_text())
        assert scores[(n,)] == pytest.approx(summary["foreground_mean"]["Dice"], abs=1e-9)
    best = min(candidates, key=lambda m: (-scores[m], len(m)))
    assert decision["selected"]["configurations"] == list(best)
    # each step kept exactly where it raises the CV mean Dice, tried after those kept
    base = {c: labels(best, c) for c in training}
    kept: list[str] = []
    for trial, step in zip(decision["postprocessing"]["trials"], STEPS):
        before = _cv_mean([_dice(_post(base[c], kept), refs[c]) for c in training])
        after = _cv_mean([_dice(_post(base[c], [*kept, step]), refs[c]) for c in training])
        assert trial["step"] == step
        assert trial["cv_dice_without"] == pytest.approx(before, abs=1e-9)
        assert trial["cv_dice_with"] == pytest.approx(after, abs=1e-9)
        assert trial["kept"] == (after > before)
        kept += [step] if after > before else []
    assert decision["postprocessing"]["steps"] == kept
    # every checkpoint of the chosen configurations, resolvable from the decision's folder
    for entry in decision["configurations"]:
        folds = sorted((cv_run.cvs[entry["name"]] / "folds").glob("fold_*/checkpoints/best.ckpt"))
        listed = [(cv_run.selection / p).resolve() for p in entry["checkpoints"]]
        assert listed == [p.resolve() for p in folds]
        assert [i["overlap"] for i in entry["inference"]] == [0.5] * 3  # no calibration run


def test_predict_with_the_decision_reproduces_ensemble_and_postprocessing(cv_run, tmp_path):
    decision = _decision(cv_run)
    chosen = decision["selected"]["configurations"]
    ckpts = [
        p
        for name in chosen
        for p in sorted((cv_run.cvs[name] / "folds").glob("fold_*/checkpoints/best.ckpt"))
    ]
    # the smallest test image (prediction time)
    image = min((cv_run.root / "imagesTs").glob("*.nii.gz"), key=lambda p: p.stat().st_size)
    opts = PredictOptions(progress=False, device="cpu")
    (hand,) = predict(ckpt=ckpts, input=image, output=tmp_path / "hand", options=opts)
    plain = _load(hand)

    def cli(ckpt: Path, *extra: str) -> np.ndarray:
        out = tmp_path / f"cli{len(list(tmp_path.iterdir()))}"
        args = (f"ckpt={ckpt}", f"input={image}", f"output={out}", "progress=false", "device=cpu")
        assert run_segkit("predict", *args, *extra) == 0
        return _load(out / image.name)

    steps = decision["postprocessing"]["steps"]
    assert np.array_equal(cli(cv_run.selection), apply_postprocessing(plain, steps))
    # a decision that keeps both steps applies both, in order; a key given on the command
    # line wins over the decision
    forced = dict(decision, postprocessing={**decision["postprocessing"], "steps": list(STEPS)})
    path = cv_run.selection / "forced.json"
    path.write_text(json.dumps(forced))
    both = apply_postprocessing(plain, STEPS)
    assert not np.array_equal(both, plain)  # post-processing changes this prediction
    assert np.array_equal(both, _post(plain, STEPS))
    assert np.array_equal(cli(path), both)
    assert np.array_equal(cli(path, "postprocess=none"), plain)
    # the Python API takes the decision's settings as its defaults too
    (api,) = predict(ckpt=path, input=image, output=tmp_path / "api", options=opts)
    assert np.array_equal(_load(api), both)
    path.unlink()


def test_incomplete_cv_is_reported_and_refused(cv_run, tmp_path, capsys):
    cv = tmp_path / "plain"
    shutil.copytree(cv_run.cvs["plain"] / "folds", cv / "folds")
    shutil.rmtree(cv / "folds" / "fold_1")  # never trained: missing
    (cv / "folds" / "fold_2" / "metrics.json").unlink()  # crashed: a log, no metrics
    assert run_segkit("cv", f"from={cv / 'folds'}", f"out={cv}", "device=cpu") == 0
    summary = json.loads((cv / "summary.json").read_text())
    bad = summary["crossval"]["missing_or_failed"]
    assert [(f["fold"], f["status"]) for f in bad] == [(1, "missing"), (2, "failed")]
    splits = _splits(cv_run.root)
    assert summary["cases_without_prediction"] == sorted(splits[1]["val"] + splits[2]["val"])
    assert sorted(p.name for p in (cv / "oof").glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for c in splits[0]["val"]
    )
    capsys.readouterr()
    sel = tmp_path / "sel"
    assert run_segkit("select", cv, cv_run.cvs["shallow"], f"out={sel}") == 2
    err = capsys.readouterr().err
    assert "fold 1: missing" in err and "fold 2: failed" in err and "allow_incomplete=true" in err
    assert not sel.exists()
    assert (
        run_segkit("select", cv, cv_run.cvs["shallow"], f"out={sel}", "allow_incomplete=true") == 0
    )
    decision = json.loads((sel / "decision.json").read_text())
    assert decision["configurations"][0]["folds"] == [0]
    assert decision["allow_incomplete"] is True


def _tampered(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    for path in dst.glob("folds/fold_*/checkpoints/best.ckpt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        edit(ckpt["hyper_parameters"])
        torch.save(ckpt, path)
    return dst


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda hp: hp["label_names"].update({3: "tumour"}), "classes"),
        (lambda hp: hp["preprocessor"].update(target_spacing=[2.0, 2.0, 5.0]), "preprocessing"),
    ],
    ids=["labels", "preprocessing"],
)
def test_configurations_that_do_not_compare_are_refused(cv_run, tmp_path, capsys, edit, reason):
    other = _tampered(cv_run.cvs["shallow"], tmp_path / "other", edit)
    capsys.readouterr()
    assert run_segkit("select", cv_run.cvs["plain"], other, f"out={tmp_path / 'sel'}") == 2
    err = capsys.readouterr().err
    assert "can be neither compared nor ensembled" in err and reason in err
    assert not (tmp_path / "sel").exists()


def test_postprocessing_with_a_class_absent_from_a_case(cv_run, tmp_path):
    """Out-of-fold maps without some classes (and a reference without one) select fine."""
    cv = tmp_path / "plain"
    shutil.copytree(cv_run.cvs["plain"], cv)
    cases = sorted(_training(cv_run.root))
    # all background; only class 1; no class 3 (absent from its reference too, below)
    for case, keep in zip(cases[:3], ({0}, {0, 1}, {0, 1, 2})):
        f = cv / "oof" / f"{case}.nii.gz"
        img = nib.load(str(f))
        seg = np.asarray(img.dataobj)
        seg[~np.isin(seg, list(keep))] = 0
        nib.save(nib.Nifti1Image(seg, img.affine, img.header), str(f))
    summary = json.loads((cv / "summary.json").read_text())
    entry = next(e for e in summary["metric_per_case"] if e["case"] == cases[2])
    ref = nib.load(entry["reference_file"])
    label = np.asarray(ref.dataobj).copy()
    label[label == 3] = 0  # the reference of this case lacks class 3
    nib.save(nib.Nifti1Image(label, ref.affine, ref.header), str(tmp_path / "ref.nii.gz"))
    entry["reference_file"] = str(tmp_path / "ref.nii.gz")
    (cv / "summary.json").write_text(json.dumps(summary))
    assert run_segkit("select", cv, f"out={tmp_path / 'sel'}") == 0
    decision = json.loads((tmp_path / "sel" / "decision.json").read_text())
    training = _training(cv_run.root)
    refs = {c: _load(label) for c, (_, label) in training.items()}
    refs[cases[2]] = _load(tmp_path / "ref.nii.gz")
    segs = {c: _load(cv / "oof" / f"{c}.nii.gz") for c in cases}
    assert decision["candidates"][0]["cv_dice"] == pytest.approx(
        _cv_mean([_dice(segs[c], refs[c]) for c in cases]), abs=1e-9
    )
    assert np.isnan(_dice(segs[cases[2]], refs[cases[2]])[2])  # class 3 in neither map
    for trial in decision["postprocessing"]["trials"]:
        assert math.isfinite(trial["cv_dice_with"])


REGIONS = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}


def _region_dice(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    out = []
    for values in REGIONS.values():
        p, r = np.isin(pred, values), np.isin(ref, values)
        total = p.sum() + r.sum()
        out.append(math.nan if total == 0 else 2 * (p & r).sum() / total)
    return np.array(out)


def test_select_scores_regions_on_a_region_dataset(region_cv):
    """Each region's Dice on the label maps turned into regions (validation's and segkit
    evaluate's), not the Dice of the label values."""
    cv = region_cv.cvs["regions"]
    labels = sorted((region_cv.root / "labelsTr").glob("*.nii.gz"))
    refs = {p.name.removesuffix(".nii.gz"): _load(p) for p in labels}
    segs = {c: _load(cv / "oof" / f"{c}.nii.gz") for c in refs}
    by_region = _cv_mean([_region_dice(segs[c], refs[c]) for c in refs])
    by_label = _cv_mean([_dice(segs[c], refs[c]) for c in refs])
    assert abs(by_region - by_label) > 1e-3  # these predictions tell the two apart
    decision = _decision(region_cv)
    assert decision["score_names"] == list(REGIONS)
    (candidate,) = decision["candidates"]
    assert candidate["cv_dice"] == pytest.approx(by_region, abs=1e-9)
    per_region = np.nanmean(np.stack([_region_dice(segs[c], refs[c]) for c in refs]), axis=0)
    np.testing.assert_allclose(candidate["cv_dice_per_class"], per_region, atol=1e-9)
    # the CV summary scores the regions as segkit evaluate does, and names them
    summary = json.loads((cv / "summary.json").read_text())
    assert summary["region_foreground_mean"]["Dice"] == pytest.approx(by_region, abs=1e-9)
    assert summary["crossval"]["regions"] == [
        {"name": n, "labels": list(v)} for n, v in REGIONS.items()
    ]
    # post-processing is kept or dropped on the region Dice too
    kept: list[str] = []
    for trial, step in zip(decision["postprocessing"]["trials"], STEPS):
        before = _cv_mean([_region_dice(_post(segs[c], kept), refs[c]) for c in refs])
        after = _cv_mean([_region_dice(_post(segs[c], [*kept, step]), refs[c]) for c in refs])
        assert trial["cv_dice_without"] == pytest.approx(before, abs=1e-9)
        assert trial["cv_dice_with"] == pytest.approx(after, abs=1e-9)
        kept += [step] if after > before else []
    assert decision["postprocessing"]["steps"] == kept


def test_cv_refuses_to_set_the_fold_or_reuse_a_cv(cv_run, capsys):
    assert run_segkit("cv", "data.fold=1") == 2
    assert "data.fold=1 given, but cv trains every fold itself" in capsys.readouterr().err
    assert run_segkit("cv", f"out={cv_run.cvs['plain']}") == 2
    assert "holds the folds of another configuration" in capsys.readouterr().err


def test_folds_ran_as_submitit_jobs(cv_run):
    """launcher=submitit_local: every fold a job of its own process, its result pickled back."""
    summary = json.loads((cv_run.cvs["plain"] / "summary.json").read_text())
    assert [f["status"] for f in summary["crossval"]["folds"]] == ["ok"] * 3
    jobs = sorted(
        d for d in (cv_run.cvs["plain"] / "folds" / ".submitit").iterdir() if d.name.isdigit()
    )
    assert len(jobs) == 3
    pids = set()
    for job in jobs:
        log = (job / f"{job.name}_0_log.out").read_text()
        assert "Job completed successfully" in log
        pids.add(int(re.search(r"JobEnvironment\(job_id=(\d+)", log)[1]))
        assert (job / f"{job.name}_0_result.pkl").is_file()
    assert len(pids) == 3 and os.getpid() not in pids
    # the basic launcher ran the other configuration's folds without submitit
    assert not (cv_run.cvs["shallow"] / "folds" / ".submitit").exists()


def test_ckpt_names_a_cv_directory_or_a_decision(cv_run, tmp_path, capsys):
    from segkit.inference.predict.decision import resolve_checkpoints

    for cv in cv_run.cvs.values():  # a CV directory: its folds
        folds = sorted((cv / "folds").glob("fold_*/checkpoints/best.ckpt"))
        assert resolve_checkpoints(cv) == folds and len(folds) == 3
    decision = _decision(cv_run)
    names = decision["selected"]["configurations"]
    expected = [p.resolve() for n in names for p in resolve_checkpoints(cv_run.cvs[n])]
    assert resolve_checkpoints(cv_run.selection) == expected
    assert resolve_checkpoints(cv_run.selection / "decision.json") == expected
    # a decision whose checkpoints are gone is refused, naming them
    moved = tmp_path / "decision.json"
    shutil.copy(cv_run.selection / "decision.json", moved)  # relative paths now lead nowhere
    capsys.readouterr()
    args = (f"ckpt={moved}", f"input={cv_run.root / 'imagesTs'}", f"output={tmp_path / 'o'}")
    assert run_segkit("predict", *args) == 2
    err = capsys.readouterr().err
    assert "names checkpoint(s) that do not exist" in err and not (tmp_path / "o").exists()
