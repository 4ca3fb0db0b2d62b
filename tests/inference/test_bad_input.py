"""Every user mistake: one clear message, exit code 2, no output file, no code run."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from segkit.cli import main
from segkit.errors import ConfigError
from segkit.inference.predict.checkpoint import load_model
from tests.inference.conftest import outputs, write_image


def _run(capsys, *args) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_not_executed(tmp_path, capsys, writer):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    obj = {"state_dict": {}, "hyper_parameters": {"x": _Payload(str(marker))}}
    if writer == "torch":
        torch.save(obj, bad)
    else:
        bad.write_bytes(pickle.dumps(obj))
    src = write_image(tmp_path / "in" / "a.nii.gz")
    err = _run(capsys, "predict", f"ckpt={bad}", f"input={src}", f"output={tmp_path / 'out'}")
    assert not marker.exists()
    assert "refused to load" in err and "never unpickles" in err
    assert outputs(tmp_path / "out") == []


def test_not_segkit_checkpoint(tmp_path, capsys):
    path = tmp_path / "other.ckpt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    err = _run(
        capsys, "export", f"ckpt={path}", "format=torchscript", f"output={tmp_path / 'm.pt'}"
    )
    assert "not a segkit checkpoint" in err
    assert outputs(tmp_path) == ["other.ckpt"]


def test_truncated_checkpoint(ckpt, tmp_path, capsys):
    cut = tmp_path / "cut.ckpt"
    data = ckpt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    src = write_image(tmp_path / "in" / "a.nii.gz")
    err = _run(capsys, "predict", f"ckpt={cut}", f"input={src}", f"output={tmp_path / 'out'}")
    assert "truncated or corrupt" in err
    assert outputs(tmp_path / "out") == []


def test_channel_mismatch(ckpt, tmp_path, capsys):
    src = write_image(tmp_path / "in" / "two.nii.gz", channels=2)
    err = _run(capsys, "predict", f"ckpt={ckpt}", f"input={src}", f"output={tmp_path / 'out'}")
    assert "has 2 channel(s)" in err and "trained on 1" in err
    assert outputs(tmp_path / "out") == []


def test_missing_channel_file(ckpt, tmp_path):
    from segkit.errors import DataError
    from segkit.inference.predict.run import find_cases

    write_image(tmp_path / "x_0000.nii.gz")
    with pytest.raises(DataError, match="missing x_0001"):
        find_cases(tmp_path, num_channels=2)


def test_folder_without_nifti(ckpt, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    err = _run(
        capsys,
        "predict",
        f"ckpt={ckpt}",
        f"input={tmp_path / 'empty'}",
        f"output={tmp_path / 'out'}",
    )
    assert "holds no NIfTI files" in err
    assert outputs(tmp_path / "out") == []


def test_unwritable_output(ckpt, tmp_path, capsys):
    src = write_image(tmp_path / "in" / "a.nii.gz")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    err = _run(capsys, "predict", f"ckpt={ckpt}", f"input={src}", f"output={blocker / 'sub'}")
    assert "cannot write there" in err
    err = _run(capsys, "predict", f"ckpt={ckpt}", f"input={src}", f"output={blocker}")
    assert "not a directory" in err


def test_truncated_image_leaves_no_output(ckpt, tmp_path, capsys):
    src = write_image(tmp_path / "in" / "a.nii.gz", shape=(31, 29, 17))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 2 // 3])
    err = _run(capsys, "predict", f"ckpt={ckpt}", f"input={src}", f"output={tmp_path / 'out'}")
    assert "a.nii.gz" in err
    assert outputs(tmp_path / "out") == []


def test_bad_options(ckpt, tmp_path, capsys):
    src = write_image(tmp_path / "in" / "a.nii.gz")
    out = f"output={tmp_path / 'out'}"
    assert "allowed: auto, whole, sliding" in _run(
        capsys, "predict", f"ckpt={ckpt}", f"input={src}", out, "mode=fast"
    )
    assert "expected a number" in _run(
        capsys, "predict", f"ckpt={ckpt}", f"input={src}", out, "overlap=half"
    )
    assert "unknown key 'overlapp'" in _run(
        capsys, "predict", f"ckpt={ckpt}", f"input={src}", out, "overlapp=0.5"
    )
    assert "missing output=" in _run(capsys, "predict", f"ckpt={ckpt}", f"input={src}")
    assert outputs(tmp_path / "out") == []


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_model(tmp_path / "nope.ckpt")


def test_lightning_checkpoint_loads_weights_only(ckpt, tmp_path):
    copy = tmp_path / "c.ckpt"
    shutil.copy(ckpt, copy)
    model = load_model(copy)
    assert model.spec.in_channels == 1 and model.patch_size == (16, 16, 12)
    assert not model.net.training
    assert model.label_names == {0: "background", 1: "low", 2: "high"}


def test_checkpoint_naming_a_foreign_block_class_is_not_imported(ckpt, tmp_path, monkeypatch):
    # a "block" module whose import would create a marker file
    marker = tmp_path / "imported"
    (tmp_path / "evilblock.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).mkdir()\nclass Block: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["model"]["encoder_block"] = {"_target_": "evilblock.Block"}
    bad = tmp_path / "foreign.ckpt"
    torch.save(state, bad)
    with pytest.raises(ConfigError, match=r"outside segkit \(evilblock.Block\).*trust="):
        load_model(bad)
    assert not marker.exists()
