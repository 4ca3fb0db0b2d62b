"""segkit predict: exact grids, layouts, modes, TTA, probabilities."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from segkit.cli import main
from segkit.inference.predict import PredictOptions, find_cases, predict
from tests.inference.conftest import NUM_CLASSES, outputs, write_image


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_prediction_has_input_grid(ckpt, tmp_path, mode):
    src = write_image(tmp_path / "in" / "case_a.nii.gz", shape=(37, 29, 15))
    out = tmp_path / "out"
    written = predict(
        ckpt=ckpt,
        input=src,
        output=out,
        options=PredictOptions(mode=mode, overlap=0.5, progress=False),
    )
    assert [p.name for p in written] == ["case_a.nii.gz"]
    ref, pred = nib.load(str(src)), nib.load(str(written[0]))
    assert pred.shape == (37, 29, 15)
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-6)
    np.testing.assert_allclose(pred.header.get_zooms(), ref.header.get_zooms(), atol=1e-6)
    data = np.asarray(pred.dataobj)
    assert data.dtype == np.uint8 and data.max() < NUM_CLASSES
    # outside the nonzero crop the prediction is background by construction
    assert (data[:2] == 0).all()
    assert outputs(out) == ["case_a.nii.gz"]


def test_cli_folder_tta_probabilities(ckpt, tmp_path, capsys):
    for i, shape in enumerate([(21, 17, 11), (19, 23, 9)]):
        write_image(tmp_path / "imagesTs" / f"c{i}.nii", shape=shape, seed=i)
    (tmp_path / "dataset.json").write_text("{}")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            f"ckpt={ckpt}",
            f"input={tmp_path}",
            f"output={out}",
            "tta=true",
            "save_probabilities=true",
            "mode=sliding",
            "overlap=0.25",
            "sw_batch_size=3",
            "progress=false",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert outputs(out) == ["c0.nii", "c0.npz", "c1.nii", "c1.npz"]
    probs = np.load(out / "c1.npz")["probabilities"]
    assert probs.shape == (NUM_CLASSES, 19, 23, 9)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-2)
    labels = np.asarray(nib.load(str(out / "c1.nii")).dataobj)
    assert labels.shape == (19, 23, 9)


def test_multichannel_both_layouts(ckpt2, tmp_path):
    # Decathlon: one 4D file, channels last
    dec = write_image(tmp_path / "dec" / "d0.nii.gz", shape=(17, 15, 11), channels=2)
    # nnU-Net: one 3D file per channel
    for c in range(2):
        write_image(tmp_path / "nn" / f"n0_{c:04d}.nii.gz", shape=(15, 17, 9), seed=c)
    written = predict(
        ckpt=ckpt2, input=dec.parent, output=tmp_path / "o1", options=PredictOptions(progress=False)
    )
    assert nib.load(str(written[0])).shape == (17, 15, 11)
    written = predict(
        ckpt=ckpt2,
        input=tmp_path / "nn",
        output=tmp_path / "o2",
        options=PredictOptions(progress=False),
    )
    assert [p.name for p in written] == ["n0.nii.gz"]
    assert nib.load(str(written[0])).shape == (15, 17, 9)


def test_find_cases_groups_channels(tmp_path):
    for name in ["a_0000", "a_0001", "b_0000", "b_0001"]:
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    cases = find_cases(tmp_path, num_channels=2)
    assert [(c.case_id, [p.name for p in c.images]) for c in cases] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]),
        ("b", ["b_0000.nii.gz", "b_0001.nii.gz"]),
    ]
    # single-channel nnU-Net names lose their channel suffix
    assert [c.case_id for c in find_cases(tmp_path / "a_0000.nii.gz", num_channels=1)] == ["a"]
