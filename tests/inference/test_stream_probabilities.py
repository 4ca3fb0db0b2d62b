"""``segkit predict``'s label files and ``save_probabilities`` against a reference built in the
tests, and the slab-wise inversion against ``Preprocessor.invert`` of the whole probabilities."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform
from scipy import ndimage

from segkit.data import invert as invert_mod
from segkit.data.invert import ProbabilityFile, invert_probabilities
from segkit.data.preprocess import Preprocessor
from segkit.errors import DataError
from segkit.inference.predict.run import PredictOptions, predict
from tests.inference.conftest import make_checkpoint, outputs, write_image

F16 = 1.5e-3  # two float16 roundings of values in [0, 1]


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    """A second, different 1-channel checkpoint (instance norm), for ensembles."""
    path = tmp_path_factory.mktemp("other") / "best.ckpt"
    return make_checkpoint(path, epochs=1, norm="instance")


def _scipy_invert(probs: np.ndarray, props: dict, regions: bool = False) -> np.ndarray:
    """The inversion written with scipy and nibabel alone: each class resampled linearly to the
    crop (edge-aligned grids, clamped at the borders), certain background outside the crop
    (class 0 at 1; for regions every region at 0), the canonical axes turned back to the
    file's."""
    crop = tuple(props["shape_after_crop"])
    scale = np.array(probs.shape[1:], float) / np.array(crop, float)
    full = np.zeros((len(probs), *props["canonical_shape"]), np.float32)
    full[0] = 0.0 if regions else 1.0
    box = tuple(slice(lo, hi) for lo, hi in props["crop_box"])
    for k, p in enumerate(probs):
        full[k][box] = ndimage.affine_transform(
            p, scale, offset=0.5 * scale - 0.5, output_shape=crop, order=1, mode="nearest"
        )
    back = ornt_transform(axcodes2ornt("RAS"), np.asarray(props["orientation"], float))
    return np.stack([apply_orientation(c, back) for c in full])


@pytest.mark.parametrize("spacing", [(0.9, 1.3, 2.1), (2.6, 0.7, 1.5)])
def test_slab_wise_inversion_equals_preprocessor_invert(tmp_path, monkeypatch, spacing):
    from tests.inference.conftest import oblique_affine

    src = write_image(tmp_path / "a.nii.gz", shape=(37, 29, 15), affine=oblique_affine(spacing))
    pre = Preprocessor(
        target_spacing=(1.0, 1.5, 2.0), normalization=("zscore",), num_channels=1, num_classes=4
    )
    image, props = pre.preprocess_image([src])
    assert tuple(props["resampled_shape"]) != tuple(props["shape_after_crop"])
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(4, *image.shape[1:]))
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    store = ProbabilityFile(tmp_path / "pre.npy", 4, image.shape[1:])
    tiles = [range(0, n, t) for n, t in zip(image.shape[1:], (3, 4, 5), strict=True)]
    for corner in itertools.product(*tiles):  # 3D tiles, as the stream finalises them
        box = tuple(slice(c, c + t) for c, t in zip(corner, (3, 4, 5), strict=True))
        store.write(box, probs[(slice(None), *box)])
    stored = np.load(tmp_path / "pre.npy")
    np.testing.assert_array_equal(stored, probs.astype(np.float16))
    monkeypatch.setattr(invert_mod, "_SLAB_BYTES", 1)  # one canonical row per slab
    invert_probabilities(tmp_path / "pre.npy", props, tmp_path / "orig.npy")
    got = np.load(tmp_path / "orig.npy")
    # the same float16 as the whole array inverted at once ...
    whole = pre.invert(stored.astype(np.float32), props).astype(np.float16)
    assert got.shape == whole.shape == (4, 37, 29, 15) and got.dtype == np.float16
    np.testing.assert_array_equal(got, whole)
    # ... and, within two float16 roundings, what scipy and nibabel make of the probabilities
    assert np.abs(got.astype(np.float32) - _scipy_invert(probs, props)).max() <= F16


def test_region_probabilities_are_zero_outside_the_crop(tmp_path):
    """Region channels have no background channel: outside the crop every region is 0 (the
    softmax convention, channel 0 at 1, would read as a certain first region there)."""
    image = np.zeros((30, 26, 14), np.float32)
    image[6:24, 5:20, 3:11] = np.random.default_rng(1).normal(100, 20, (18, 15, 8))
    nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.5, 2.0, 1.0])), str(tmp_path / "a.nii.gz"))
    pre = Preprocessor(
        target_spacing=(1.0, 1.5, 2.0), normalization=("zscore",), num_channels=1, num_classes=3
    )
    data, props = pre.preprocess_image([tmp_path / "a.nii.gz"])
    assert tuple(props["shape_after_crop"]) != image.shape  # something outside the crop
    probs = np.random.default_rng(2).uniform(size=(2, *data.shape[1:])).astype(np.float16)
    np.save(tmp_path / "pre.npy", probs)
    invert_probabilities(tmp_path / "pre.npy", props, tmp_path / "orig.npy", regions=True)
    got = np.load(tmp_path / "orig.npy").astype(np.float32)
    want = _scipy_invert(probs.astype(np.float32), props, regions=True)
    assert np.abs(got - want).max() <= F16
    assert got[:, :6].max() == 0.0  # outside the crop


def test_a_box_of_another_extent_is_refused(tmp_path):
    store = ProbabilityFile(tmp_path / "pre.npy", 2, (6, 5, 4))
    with pytest.raises(ValueError, match=r"extent \(2, 5, 4\) takes probabilities of shape"):
        store.write((slice(4, 8), slice(None), slice(0, 4)), np.zeros((2, 1, 5, 4)))


def _predict(ckpt, src, out, **kw):
    lines: list[str] = []
    opts = PredictOptions(progress=False, save_probabilities=True, mode="sliding", **kw)
    predict(ckpt=ckpt, input=src, output=out, options=opts, report=lines.append)
    labels = np.asarray(nib.load(str(out / "a.nii.gz")).dataobj)
    npz = np.load(out / "a.npz")
    return labels, npz["probabilities"], list(npz["label_names"]), lines[0]


@pytest.mark.parametrize(("tta", "ensemble"), [(False, False), (True, True)])
def test_predict_writes_the_reference_labels_and_probabilities_on_the_input_grid(
    ckpt, other_ckpt, tmp_path, monkeypatch, tta, ensemble
):
    # Reference: the checkpoints' preprocessing, a plain sliding-window loop written in the
    # tests (tests/inference/test_engine_reference.py), softmax, the mean over models, and
    # the in-memory Preprocessor.invert; segkit predict streams tiles to a float16 file and
    # inverts it slab by slab (one row at a time here).
    import torch

    from segkit.inference.engine.windows import mirror_axes
    from segkit.inference.predict.checkpoint import load_model
    from tests.inference.test_engine_reference import reference_logits

    monkeypatch.setattr(invert_mod, "_SLAB_BYTES", 1)  # invert one row at a time
    src = write_image(tmp_path / "in" / "a.nii.gz", shape=(41, 31, 17))
    paths = [ckpt, other_ckpt] if ensemble else [ckpt]
    labels, probs, names, line = _predict(",".join(map(str, paths)), src, tmp_path / "s", tta=tta)
    models = [load_model(p) for p in paths]
    pre = models[0].preprocessor
    image, props = pre.preprocess_image((src,))
    x = torch.from_numpy(image)[None]
    flips = mirror_axes((2, 3, 4)) if tta else ()
    total = 0
    for m in models:
        overlap = (m.calibration or {}).get("overlap", 0.5)
        logits = reference_logits(m.net, x, m.patch_size, overlap, flips)
        total = total + torch.softmax(logits, 0)
    mean = (total / len(models)).numpy()
    expected = pre.invert(mean, props)
    assert "sliding window" in line and "estimated peak" in line
    assert names == ["background", "low", "high"]
    assert probs.shape == (3, 41, 31, 17) and probs.dtype == np.float16
    assert expected.std() > 0.01  # not a constant map
    # float16 storage (F16) plus linear inversion of values that differ by ~1e-6
    assert np.abs(probs.astype(np.float32) - expected).max() <= F16
    # labels: argmax on the preprocessed grid, inverted (nearest) as label maps are; equal
    # wherever the top two reference probabilities are not within the tolerance of a tie
    top2 = np.sort(mean, axis=0)[-2:]
    decided_pre = (top2[1] - top2[0]) > 1e-5
    assert decided_pre.mean() > 0.95
    decided = pre.invert(decided_pre.astype(np.uint8), props).astype(bool)
    reference = pre.invert(mean.argmax(0).astype(np.uint8), props)
    np.testing.assert_array_equal(labels[decided], reference[decided])
    assert outputs(tmp_path / "s") == ["a.nii.gz", "a.npz"]  # no temporaries left


def test_save_probabilities_is_refused_with_its_size_where_the_disk_is_short(
    ckpt, tmp_path, monkeypatch
):
    import shutil

    src = write_image(tmp_path / "in" / "a.nii.gz", shape=(23, 19, 13))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(DataError, match=r"save_probabilities: case 'a' needs about .* GiB of disk"):
        predict(
            ckpt=ckpt,
            input=src,
            output=tmp_path / "o",
            options=PredictOptions(progress=False, save_probabilities=True),
            report=lambda line: None,
        )
    assert outputs(tmp_path / "o") == []  # nothing half-written
