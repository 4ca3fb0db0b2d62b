"""``segkit export format=nnunet``: the folder nnU-Net's own predictor loads, and its labels.

Reference: ``nnUNetPredictor`` (nnunetv2 2.8.1) run live on the exported folder, with its
accumulators in float32 (see test_nnunet_folder.py), against ``segkit predict`` of the
checkpoint itself with the same inference (sliding window, overlap 0.5, no mirroring). The
cases are stored at the checkpoint's target spacing with an oblique affine whose axes reorient
to RAS in place, so neither tool resamples and both feed the network the image reoriented to
RAS, cropped and z-scored (the same arrays). Asserted: probabilities within the float16 that
stores them, labels equal wherever the top two probabilities differ by more, and the logits of
the network rebuilt from the written plans equal segkit's (``check=true``). Where an input must
be resampled, nnU-Net's resampling (grid-aligned, float64) and segkit's differ: docs/nnunet.md.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segkit.errors import ConfigError
from segkit.inference.nnunet_export import export_nnunet
from segkit.inference.predict.checkpoint import load_model
from segkit.inference.predict.run import PredictOptions, predict
from tests.inference.conftest import train_tiny, write_image
from tests.inference.nnunet_model import nnunet_predict

pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
STORED = 2.0**-12 + 1e-5  # float16 storage of a probability below 1, plus float32 slack


def _rotated(spacing) -> np.ndarray:
    """Voxel axes turned 12° about z: oblique, yet each still closest to its own RAS axis (so
    reorienting to RAS keeps them, and the checkpoint's spacing needs no resampling)."""
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(spacing)
    affine[:3, 3] = [3.0, -2.0, 5.0]
    return affine


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "best.ckpt"
    train_tiny(norm="instance", epochs=3).save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def region_checkpoint(tmp_path_factory) -> Path:
    """One sigmoid output per region (conftest's REGIONS: foreground [1, 2] ⊃ high [2])."""
    path = tmp_path_factory.mktemp("export_regions") / "best.ckpt"
    train_tiny(norm="instance", epochs=3, regions=True).save_checkpoint(path)
    return path


def _decided(q: np.ndarray, regions: bool) -> np.ndarray:
    """Voxels whose label no float16 rounding of ``q`` (K, *S) can change: the top two class
    probabilities apart by more than it, or every region's probability that far from 0.5."""
    if regions:
        return (np.abs(q - 0.5) > 2 * STORED).all(axis=0)
    top2 = np.sort(q, axis=0)[-2:]
    return (top2[1] - top2[0]) > 2 * STORED


@pytest.mark.parametrize("kind", ["softmax", "regions", "2d", "2d-across-axis-0"])
def test_nnunet_predicts_the_exported_folder_as_segkit_predicts_the_checkpoint(
    kind, checkpoint, region_checkpoint, tmp_path
):
    import json

    if kind == "regions":
        checkpoint = region_checkpoint
    elif kind.startswith("2d"):  # a 2D network: nnU-Net's 2d configuration slices the volume
        checkpoint = tmp_path / "2d.ckpt"
        axis = 0 if kind.endswith("axis-0") else 2
        train_tiny(norm="instance", epochs=3, dims=2, slice_axis=axis).save_checkpoint(checkpoint)
    folder = tmp_path / "nnunet_model"
    model = load_model(checkpoint)
    error = export_nnunet(model, folder)
    assert error is not None and error <= 1e-5
    cases = tmp_path / "cases"
    for i, shape in enumerate([(37, 29, 21), (41, 33, 19)]):
        # the checkpoint's spacing (1, 1.5, 2) on an oblique grid: nothing to resample
        write_image(cases / f"c{i}_0000.nii.gz", shape, seed=i, affine=_rotated((1, 1.5, 2)))
    ours = tmp_path / "segkit"
    opts = PredictOptions(
        mode="sliding", overlap=0.5, tta=False, progress=False, save_probabilities=True
    )
    predict(ckpt=str(checkpoint), input=str(cases), output=str(ours), options=opts, report=print)
    ref = nnunet_predict(folder, cases, tmp_path / "nnunet", mirror=False, float32=True)
    for i in range(2):
        a = np.asarray(nib.load(str(ours / f"c{i}.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(ref / f"c{i}.nii.gz")).dataobj)
        p = np.load(ours / f"c{i}.npz")["probabilities"].astype(np.float32)
        q = np.load(ref / f"c{i}.npz")["probabilities"].transpose(0, 3, 2, 1)
        assert a.shape == b.shape and len(np.unique(b)) >= 2
        assert float(np.abs(p - q).max()) <= STORED
        decided = _decided(q, kind == "regions")
        assert decided.mean() > 0.9
        assert np.array_equal(a[decided], b[decided]), i
    if kind == "regions":  # nnU-Net read regions, not classes: its LabelManager says so
        from nnunetv2.utilities.label_handling.label_handling import LabelManager

        dataset = json.loads((folder / "dataset.json").read_text())
        manager = LabelManager(dataset["labels"], dataset.get("regions_class_order"))
        assert manager.has_regions and manager.foreground_regions == [(1, 2), (2,)]
        assert p.shape[0] == q.shape[0] == 2


def test_what_nnunet_cannot_represent_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "bn.ckpt"
    train_tiny(norm="batch", epochs=1).save_checkpoint(path)
    with pytest.raises(ConfigError, match=r"model.norm=batch.*Fix: model.norm=instance"):
        export_nnunet(load_model(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bn.ckpt"]  # no temporary left


def test_an_output_folder_with_files_is_refused(checkpoint, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_nnunet(load_model(checkpoint), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "x"
