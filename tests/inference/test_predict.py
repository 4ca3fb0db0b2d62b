"""segkit predict: exact grids, layouts, modes, TTA, probabilities."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest

from segkit.cli import main
from segkit.inference.predict.run import PredictOptions, find_cases, predict
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


def test_output_in_the_input_folder_is_refused(ckpt, tmp_path, capsys):
    src = write_image(tmp_path / "in" / "a.nii.gz")
    before = src.read_bytes()
    assert main(["predict", f"ckpt={ckpt}", f"input={src}", f"output={src.parent}"]) == 2
    err = capsys.readouterr().err
    assert "is the folder of the input images" in err and "would overwrite" in err
    assert src.read_bytes() == before and outputs(src.parent) == ["a.nii.gz"]
    # nnU-Net names do not collide, but the predictions would still land among the images
    nn_img = write_image(tmp_path / "nn" / "b_0000.nii.gz")
    assert main(["predict", f"ckpt={ckpt}", f"input={nn_img.parent}", f"output={nn_img.parent}"])
    assert "is the folder of the input images" in capsys.readouterr().err
    assert outputs(nn_img.parent) == ["b_0000.nii.gz"]


def test_a_corrupt_case_fails_alone_and_is_reported(ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    for i, name in enumerate(["a", "b", "c"]):
        write_image(folder / f"{name}.nii.gz", shape=(31, 29, 17), seed=i)
    bad = folder / "b.nii.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])  # the header reads, the body does not
    out = tmp_path / "out"
    code = main(["predict", f"ckpt={ckpt}", f"input={folder}", f"output={out}", "progress=false"])
    assert code == 2
    err = capsys.readouterr().err
    assert "1 of 3 case(s) failed" in err and "b: " in err
    assert "Written (complete): a.nii.gz, c.nii.gz" in err
    assert outputs(out) == ["a.nii.gz", "c.nii.gz"]  # no temporaries left behind


def test_each_case_says_what_inference_ran_and_why(ckpt, tmp_path):
    big = write_image(tmp_path / "in" / "big.nii.gz", shape=(37, 29, 15))
    lines: list[str] = []
    predict(
        ckpt=ckpt,
        input=big,
        output=tmp_path / "out",
        options=PredictOptions(progress=False),
        report=lines.append,
    )
    # batch norm in eval mode, but the preprocessed 23×20×16 is not the 16×16×12 patch plus
    # multiples of the total stride 4: a whole pass would run on other grids
    assert len(lines) == 1 and lines[0].startswith("big: sliding window 16×16×12 over 23×20×16")
    assert "(axis 0 of the volume is not the patch size plus a multiple" in lines[0]
    lines.clear()
    predict(
        ckpt=ckpt,
        input=big,
        output=tmp_path / "out2",
        options=PredictOptions(mode="sliding", overlap=0.25, progress=False),
        report=lines.append,
    )
    assert re.match(r"big: sliding window \d+×\d+×\d+ over \d+×\d+×\d+, overlap 0.25,", lines[0])
    assert "(mode=sliding) [overlap: given; window: default]; tiles of " in lines[0]


def test_the_measured_setting_in_a_checkpoint_is_the_default(ckpt, tmp_path):
    import torch

    from segkit.inference.predict.checkpoint import CALIBRATION_KEY

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state[CALIBRATION_KEY] = {"overlap": 0.25, "window_scale": 1.5, "dice_mean": 0.9, "rows": []}
    calibrated = tmp_path / "calibrated.ckpt"
    torch.save(state, calibrated)
    src = write_image(tmp_path / "in" / "a.nii.gz", shape=(37, 29, 15))
    lines: list[str] = []
    opts = PredictOptions(mode="sliding", progress=False)
    predict(ckpt=calibrated, input=src, output=tmp_path / "o1", options=opts, report=lines.append)
    assert "overlap 0.25," in lines[0]
    assert "measured at the end of training (mean Dice 0.9000)" in lines[0]
    wide = [int(v) for v in re.search(r"window (\d+)×(\d+)×(\d+)", lines[0]).groups()]
    lines.clear()
    given = PredictOptions(mode="sliding", overlap=0.5, window_scale=1.0, progress=False)
    predict(ckpt=calibrated, input=src, output=tmp_path / "o2", options=given, report=lines.append)
    assert "overlap 0.5," in lines[0] and "[overlap/window: given]" in lines[0]
    plain = [int(v) for v in re.search(r"window (\d+)×(\d+)×(\d+)", lines[0]).groups()]
    assert all(w >= p for w, p in zip(wide, plain)) and wide != plain


def test_fold_ensemble_averages_probabilities(ckpt, tmp_path):
    import shutil

    from tests.inference.conftest import make_checkpoint

    other = make_checkpoint(
        tmp_path / "runs" / "1" / "checkpoints" / "best.ckpt", epochs=1, norm="instance"
    )
    (tmp_path / "runs" / "0" / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, tmp_path / "runs" / "0" / "checkpoints" / "best.ckpt")
    src = write_image(tmp_path / "in" / "a.nii.gz", shape=(33, 27, 15))

    def probs(which, out):
        predict(
            ckpt=which,
            input=src,
            output=tmp_path / out,
            options=PredictOptions(save_probabilities=True, progress=False),
            report=lambda line: None,
        )
        return np.load(tmp_path / out / "a.npz")["probabilities"].astype(np.float64)

    p0, p1 = probs(ckpt, "o0"), probs(other, "o1")
    assert np.abs(p0 - p1).max() > 0.05  # two different models
    both = probs(f"{ckpt},{other}", "o01")
    np.testing.assert_allclose(both, (p0 + p1) / 2, atol=1.5e-3)  # float16 on disk
    folder = probs(tmp_path / "runs", "omulti")  # the multirun directory of two folds
    np.testing.assert_allclose(folder, both, atol=1e-3)


def test_mismatched_checkpoints_are_not_averaged(ckpt, ckpt2, tmp_path, capsys):
    src = write_image(tmp_path / "in" / "a.nii.gz")
    code = main(["predict", f"ckpt={ckpt},{ckpt2}", f"input={src}", f"output={tmp_path / 'o'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot be averaged" in err and "input channels" in err
    assert outputs(tmp_path / "o") == []


def test_trust_loads_a_user_block_checkpoint_and_predicts_as_the_trained_network(tmp_path, capsys):
    import torch

    from segkit.data.preprocess import Preprocessor
    from tests.inference.conftest import train_tiny

    se = "tests.core.custom_blocks.SEBlock"
    trainer = train_tiny(epochs=1, encoder_block={"_target_": se, "reduction": 2})
    ckpt = tmp_path / "se.ckpt"
    trainer.save_checkpoint(ckpt)
    src = write_image(tmp_path / "in" / "a.nii.gz", shape=(29, 23, 17))
    args = ["predict", f"ckpt={ckpt}", f"input={src}", "mode=whole", "progress=false"]
    assert main([*args, f"output={tmp_path / 'refused'}"]) == 2
    assert f"outside segkit ({se})" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main([*args, f"output={out}", f"trust={se}", "save_probabilities=true"]) == 0
    written = np.asarray(nib.load(str(out / "a.nii.gz")).dataobj)
    probs = np.load(out / "a.npz")["probabilities"].astype(np.float32)

    # the network as training left it in memory, run here without segkit's inference path
    module = trainer.lightning_module
    assert type(module.net.encoder[0].blocks[0]).__qualname__ == "SEBlock"
    pre = Preprocessor.from_dict(dict(module.hparams.preprocessor))
    image, props = pre.preprocess_image([src])
    # an axis shorter than the training patch (16, 16, 12) is zero-padded, centred, to it
    size = image.shape[1:]
    lo = [max(0, p - s) // 2 for s, p in zip(size, (16, 16, 12))]
    padded = np.zeros((image.shape[0], *(max(s, p) for s, p in zip(size, (16, 16, 12)))))
    padded[(slice(None), *(slice(a, a + s) for a, s in zip(lo, size)))] = image
    with torch.no_grad():
        logits = module.net.eval()(torch.from_numpy(padded).float()[None])
    logits = logits[(slice(None), slice(None), *(slice(a, a + s) for a, s in zip(lo, size)))]
    expected = pre.invert(logits[0].argmax(0).numpy().astype(np.uint8), props)
    np.testing.assert_array_equal(written, expected)
    expected_probs = pre.invert(logits[0].softmax(0).numpy(), props)
    assert expected_probs[1].max() - expected_probs[1].min() > 0.05  # not a constant map
    np.testing.assert_allclose(probs, expected_probs, atol=1e-3)  # float16 on disk
