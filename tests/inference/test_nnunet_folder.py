"""``segkit predict ckpt=<nnU-Net model folder>`` against nnU-Net's ``nnUNetPredictor`` run live.

The folder is written by nnU-Net's own code (tests/inference/nnunet_model.py: its planner's
plans, its network builder, a short training, its ``save_checkpoint``). Cases cover odd sizes,
spacing other than the plans' (so nnU-Net resamples in and the export resamples logits back),
an oblique affine and a case smaller than the patch (padded).

Two references:

- **nnU-Net with float32 accumulators.** nnU-Net sums windows into float16 arrays; run with
  its accumulators (and Gaussian) in float32, everything else untouched, it computes what
  segkit computes: the same windows, weights, mirroring, fold averaging and export. Labels must
  then be equal, and probabilities equal up to the float16 in which segkit's ``.npz`` stores
  them: half a float16 ulp below 1 is 2^-12; the float32 arithmetic before it adds < 1e-5.
- **nnU-Net as shipped (float16).** Its accumulation rounds each window's weighted logits
  (weights up to 10) to float16: relative 2^-11 per addition, so labels may flip where its top
  two classes are close. Asserted: every voxel where segkit's label differs from stock
  nnU-Net's is one where stock nnU-Net differs from its own float32 run (the flips are nnU-Net's
  float16, not segkit), and per-class Dice against stock nnU-Net is >= 0.999 on every case.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from segkit.errors import ConfigError, SegkitError
from segkit.inference.predict.nnunet_folder import is_nnunet_folder, load_nnunet_folder
from segkit.inference.predict.run import PredictOptions, predict
from tests.inference import nnunet_model
from tests.inference.nnunet_model import nnunet_predict

pytest.importorskip("nnunetv2.inference.predict_from_raw_data")

STORED = 2.0**-12 + 1e-5  # float16 storage of a probability below 1, plus float32 slack


def _oblique() -> np.ndarray:
    affine = np.eye(4)
    rot = Rotation.from_euler("xyz", [10, -7, 20], degrees=True).as_matrix()
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 2.3])
    affine[:3, 3] = [4.0, -3.0, 7.0]
    return affine


CASES = [  # name, file shape, spacing (x, y, z mm), affine
    ("odd", (51, 57, 23), (1.0, 1.0, 2.0), None),
    ("aniso", (45, 53, 29), (1.3, 0.8, 1.7), None),
    ("oblique", (49, 53, 21), None, _oblique()),
    ("small", (20, 26, 9), (1.0, 1.0, 2.0), None),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nnunet")
    folder = nnunet_model.make_folder(root, folds=(0, 1), steps=150)
    cases = root / "cases"
    cases.mkdir()
    for i, (name, shape, spacing, affine) in enumerate(CASES):
        nnunet_model.write_case(
            cases / f"{name}_0000.nii.gz", shape, spacing or (1, 1, 1), seed=10 + i, affine=affine
        )
    return folder, cases


def segkit_predict(folder: Path, cases: Path, out: Path, **options) -> Path:
    opts = PredictOptions(progress=False, **{"save_probabilities": True, **options})
    predict(ckpt=str(folder), input=str(cases), output=str(out), options=opts, report=print)
    return out


def _labels(folder: Path, case: str) -> np.ndarray:
    return np.asarray(nib.load(str(folder / f"{case}.nii.gz")).dataobj)


def _probs(folder: Path, case: str, *, nnunet: bool) -> np.ndarray:
    p = np.load(folder / f"{case}.npz")["probabilities"].astype(np.float32)
    # nnU-Net stores its reader's axis order (the file's reversed); segkit the file's
    return p.transpose(0, 3, 2, 1) if nnunet else p


def _dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return 2 * float(((a == k) & (b == k)).sum()) / max(1, int((a == k).sum() + (b == k).sum()))


@pytest.mark.parametrize("mirror", [False, True], ids=["no-mirroring", "mirroring"])
def test_predicts_an_nnunet_model_folder_as_nnunet_predictor_does(model, tmp_path, mirror):
    folder, cases = model
    # both folds averaged without mirroring; mirroring (8 passes a window) on fold 1 alone
    folds = ["1"] if mirror else None
    ours = segkit_predict(folder, cases, tmp_path / "segkit", tta=mirror, nnunet_folds=folds)
    # without probabilities the logits go to disk and the export reads one class at a time
    spilled = segkit_predict(
        folder,
        cases,
        tmp_path / "spilled",
        tta=mirror,
        nnunet_folds=folds,
        save_probabilities=False,
    )
    runs = {"mirror": mirror, "folds": folds and [int(f) for f in folds]}
    ref32 = nnunet_predict(folder, cases, tmp_path / "ref32", float32=True, **runs)
    stock = nnunet_predict(folder, cases, tmp_path / "stock", float32=False, **runs)
    for name, shape, *_ in CASES:
        seg, r32, r16 = _labels(ours, name), _labels(ref32, name), _labels(stock, name)
        assert seg.shape == shape
        p, p32 = _probs(ours, name, nnunet=False), _probs(ref32, name, nnunet=True)
        assert float(np.abs(p - p32).max()) <= STORED, name
        top2 = np.sort(p32, axis=0)[-2:]
        decided = (top2[1] - top2[0]) > 2 * STORED
        assert np.array_equal(seg[decided], r32[decided]), name
        assert np.array_equal(_labels(spilled, name)[decided], r32[decided]), name
        assert not list(spilled.glob(".*")), "a temporary was left behind"
        # against nnU-Net as shipped: only where its float16 flips its own float32 label
        assert not np.any((seg != r16) & (r32 == r16)), name
        for k in (1, 2):
            assert (r16 == k).any(), (name, k)  # every class predicted: a real comparison
            assert _dice(seg, r16, k) >= 0.999, (name, k, _dice(seg, r16, k))


FOLDERS = {  # make_folder's arguments; whether the comparison runs each tool's default mirroring
    "regions": ({"regions": True, "steps": 300}, False),
    "resenc": ({"arch": "ResidualEncoderUNet", "steps": 150}, False),
    "2d": ({"patch": (32, 32), "spacing": (1.0, 1.0), "steps": 150}, True),
    "no-mirroring-trainer": ({"trainer": "nnUNetTrainerNoMirroring", "steps": 150}, True),
}


@pytest.mark.parametrize("kind", list(FOLDERS))
def test_region_resenc_2d_and_no_mirroring_model_folders(tmp_path, kind):
    # "defaults": segkit's tta default against nnU-Net's use_mirroring=True: mirroring over the
    # checkpoint's axes (2D: its two), none for a NoMirroring trainer (it allows none)
    make, defaults = FOLDERS[kind]
    folder = nnunet_model.make_folder(tmp_path, folds=(0,), **make)
    cases = tmp_path / "cases"
    cases.mkdir()
    nnunet_model.write_case(cases / "a_0000.nii.gz", (41, 47, 19), (1.3, 0.8, 1.7), seed=3)
    ours = segkit_predict(folder, cases, tmp_path / "segkit", tta=None if defaults else False)
    ref = nnunet_predict(folder, cases, tmp_path / "ref", mirror=defaults, float32=True)
    seg, r32 = _labels(ours, "a"), _labels(ref, "a")
    p, p32 = _probs(ours, "a", nnunet=False), _probs(ref, "a", nnunet=True)
    assert float(np.abs(p - p32).max()) <= STORED
    assert (seg != r32).sum() == 0
    assert len(np.unique(seg)) == 3  # every label predicted somewhere: a real comparison


def test_folds_and_checkpoint_are_chosen_and_mismatches_refused(model, tmp_path):
    folder, _ = model
    assert is_nnunet_folder(folder) and not is_nnunet_folder(folder / "fold_0")
    info, nets = load_nnunet_folder(folder, folds=["1"])
    assert info.folds == ("1",) and len(nets) == 1 and info.mirror_axes == (0, 1, 2)
    with pytest.raises(ConfigError, match=r"nnunet_folds has 3 .*fold_3"):
        load_nnunet_folder(folder, folds=[3])
    with pytest.raises(ConfigError, match="nnunet_checkpoint"):
        load_nnunet_folder(folder, checkpoint="latest")
    with pytest.raises(ConfigError, match="no fold_N/checkpoint_best.pth"):
        load_nnunet_folder(folder, checkpoint="best")


def test_a_checkpoint_with_pickled_code_is_refused_not_run(model, tmp_path):
    folder, _ = model
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("plans.json", "dataset.json"):
        (bad / name).write_bytes((folder / name).read_bytes())
    (bad / "fold_0").mkdir()
    ck = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    ck["init_args"]["hook"] = Path("/")  # an arbitrary object: the unpickler must refuse it
    torch.save(ck, bad / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ConfigError, match="refused to load"):
        load_nnunet_folder(bad)


def test_a_budget_too_small_for_the_export_is_refused_naming_one_that_works(model, tmp_path):
    folder, cases = model
    opts = PredictOptions(progress=False, max_memory_gb=0.501, nnunet_folds=["0"])
    with pytest.raises(SegkitError, match=r"nnU-Net's export of 3 classes.*max_memory_gb=1\.0"):
        predict(ckpt=str(folder), input=str(cases), output=str(tmp_path), options=opts)
