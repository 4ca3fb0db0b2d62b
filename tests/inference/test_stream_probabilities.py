"""``segkit predict`` streamed vs not: the same label files, and ``save_probabilities``
inverted slab by slab equal to ``Preprocessor.invert`` of the whole probabilities."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

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
    ref = pre.invert(probs, props).astype(np.float16)
    store = ProbabilityFile(tmp_path / "pre.npy", 4, image.shape[1:])
    for a in range(0, image.shape[1], 3):  # blocks along the streamed axis
        store.write(0, a, min(a + 3, image.shape[1]), probs[:, a : a + 3])
    monkeypatch.setattr(invert_mod, "_SLAB_BYTES", 1)  # one canonical row per slab
    invert_probabilities(tmp_path / "pre.npy", props, tmp_path / "orig.npy")
    got = np.load(tmp_path / "orig.npy")
    assert got.shape == ref.shape == (4, 37, 29, 15) and got.dtype == np.float16
    diff = np.abs(got.astype(np.float32) - ref.astype(np.float32))
    assert diff.max() <= F16
    assert np.mean(diff == 0) > 0.5  # mostly the very same float16
    np.testing.assert_array_equal(got.argmax(0) == 0, ref.argmax(0) == 0)  # the crop's outside


def _predict(ckpt, src, out, **kw):
    lines: list[str] = []
    opts = PredictOptions(progress=False, save_probabilities=True, mode="sliding", **kw)
    predict(ckpt=ckpt, input=src, output=out, options=opts, report=lines.append)
    labels = np.asarray(nib.load(str(out / "a.nii.gz")).dataobj)
    npz = np.load(out / "a.npz")
    return labels, npz["probabilities"], list(npz["label_names"]), lines[0]


@pytest.mark.parametrize(("tta", "ensemble"), [(False, False), (True, True)])
def test_predict_streamed_equals_non_streamed(
    ckpt, other_ckpt, tmp_path, monkeypatch, tta, ensemble
):
    from segkit.inference import stream

    monkeypatch.setattr(stream, "_BLOCK_BYTES", 1)  # finalise one row at a time
    monkeypatch.setattr(invert_mod, "_SLAB_BYTES", 1)  # invert one row at a time
    src = write_image(tmp_path / "in" / "a.nii.gz", shape=(41, 31, 17))
    which = f"{ckpt},{other_ckpt}" if ensemble else ckpt
    lab_s, p_s, names_s, line = _predict(which, src, tmp_path / "s", tta=tta)
    lab_d, p_d, names_d, _ = _predict(which, src, tmp_path / "d", tta=tta, stream=False)
    assert "streamed along axis 0" in line
    np.testing.assert_array_equal(lab_s, lab_d)
    assert p_d.astype(np.float32).std() > 0.01  # not a constant map
    assert names_s == names_d == ["background", "low", "high"]
    assert p_s.shape == p_d.shape == (3, 41, 31, 17) and p_s.dtype == np.float16
    assert np.abs(p_s.astype(np.float32) - p_d.astype(np.float32)).max() <= F16
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
