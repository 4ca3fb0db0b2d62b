"""segkit predict part=I/N and workers=K: shares that add up to one run, read-ahead that
changes nothing but the timing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import segkit.inference.predict.run as predict_module
from segkit.cli import main
from segkit.data.preprocess import Preprocessor
from segkit.inference.predict.parts import read_ahead
from segkit.inference.predict.run import PredictOptions, predict
from tests.inference.conftest import outputs, write_image
from tests.utils import REPO

# Names whose code-point order is not their "natural" order ("B3" < "a10" < "a2"), files of
# both endings, different grids.
CASES = {
    "b07.nii": (23, 19, 13),
    "a10.nii": (19, 23, 11),
    "a2.nii.gz": (21, 17, 15),
    "c1.nii": (25, 19, 9),
    "B3.nii": (17, 21, 13),
}
# the documented rule, written out: sorted ids B3 a10 a2 b07 c1, k-th to part k mod 2 + 1
PART1 = ["B3.nii", "a2.nii.gz", "c1.nii"]
PART2 = ["a10.nii", "b07.nii"]


def _folder(root: Path) -> Path:
    for seed, (name, shape) in enumerate(CASES.items()):
        write_image(root / name, shape=shape, seed=seed)
    return root


@pytest.fixture(scope="module")
def serial_run(ckpt, tmp_path_factory) -> tuple[Path, Path]:
    """(input folder, output folder) of one full run with workers=0."""
    root = tmp_path_factory.mktemp("parts")
    src = _folder(root / "in")
    out = root / "full"
    predict(ckpt=ckpt, input=src, output=out, options=PredictOptions(progress=False))
    return src, out


def _same_outputs(got: Path, ref: Path, names: list[str]) -> None:
    for name in names:
        a, b = nib.load(str(got / name)), nib.load(str(ref / name))
        da, db = np.asarray(a.dataobj), np.asarray(b.dataobj)
        assert da.dtype == db.dtype and np.array_equal(da, db), name
        assert np.array_equal(a.affine, b.affine), name
        assert a.header.binaryblock == b.header.binaryblock, name
        if name.endswith(".nii"):  # uncompressed: the whole file, byte for byte
            assert (got / name).read_bytes() == (ref / name).read_bytes(), name


def test_two_parts_in_two_processes_write_exactly_one_full_run(ckpt, serial_run, tmp_path, capsys):
    src, full = serial_run
    assert outputs(full) == sorted(CASES)
    out1, out2 = tmp_path / "p1", tmp_path / "p2"
    args = [f"ckpt={ckpt}", f"input={src}", "progress=false"]
    assert main(["predict", *args, f"output={out1}", "part=1/2"]) == 0
    said = capsys.readouterr().out
    # part 2 in another process (another hash seed): only the folder's names decide
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [sys.executable, "-m", "segkit.cli", "predict", *args, f"output={out2}", "part=2/2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert outputs(out1) == sorted(PART1) and outputs(out2) == sorted(PART2)
    _same_outputs(out1, full, PART1)
    _same_outputs(out2, full, PART2)
    # the summary names the part and the cases it took
    assert "part 1/2: 3 of 5 case(s) (B3, a2, c1): wrote 3" in said
    assert "part 2/2: 2 of 5 case(s) (a10, b07): wrote 2" in proc.stdout


def test_more_parts_than_cases_leaves_a_part_empty(ckpt, tmp_path, capsys):
    for name in ["x", "y"]:
        write_image(tmp_path / "in" / f"{name}.nii.gz", seed=len(name))
    out = tmp_path / "out"
    argv = ["predict", f"ckpt={ckpt}", f"input={tmp_path / 'in'}", f"output={out}"]
    assert main([*argv, "part=3/3", "progress=false"]) == 0
    assert "part 3/3: 0 of 2 case(s) (none): wrote 0" in capsys.readouterr().out
    assert outputs(out) == []


def test_workers_read_ahead_and_write_what_serial_writes(ckpt, serial_run, tmp_path, monkeypatch):
    src, full = serial_run
    started: list[str] = []
    readers: set[str] = set()
    changed = threading.Condition()
    overlapped: list[bool] = []
    real_pre, real_write = Preprocessor.preprocess_image, predict_module.write_nifti

    def pre(self, paths):
        with changed:
            started.append(Path(paths[0]).name)
            readers.add(threading.current_thread().name)
            changed.notify_all()
        return real_pre(self, paths)

    def write(path, *a, **k):
        if not overlapped:  # the first case's inference is over: was another case read meanwhile?
            with changed:
                overlapped.append(changed.wait_for(lambda: len(started) >= 2, timeout=10))
        return real_write(path, *a, **k)

    monkeypatch.setattr(Preprocessor, "preprocess_image", pre)
    monkeypatch.setattr(predict_module, "write_nifti", write)
    out = tmp_path / "out"
    written = predict(
        ckpt=ckpt, input=src, output=out, options=PredictOptions(workers=2, progress=False)
    )
    assert overlapped == [True], "no other case was read while the first one was inferred"
    assert threading.current_thread().name not in readers  # read off the inferring thread
    assert sorted(started) == sorted(CASES)  # each case read once
    assert [p.name for p in written] == sorted(CASES, key=lambda n: n.split(".")[0])
    assert outputs(out) == outputs(full)
    _same_outputs(out, full, sorted(CASES))


def test_a_corrupt_case_fails_alone_with_workers(ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    for i, name in enumerate(["a", "b", "c", "d"]):
        write_image(folder / f"{name}.nii.gz", shape=(31, 29, 17), seed=i)
    bad = folder / "b.nii.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])  # the header reads, the body does not
    argv = ["predict", f"ckpt={ckpt}", f"input={folder}", "progress=false", "workers=2"]
    assert main([*argv, f"output={tmp_path / 'all'}"]) == 2
    err = capsys.readouterr().err
    assert "1 of 4 case(s) failed" in err and "b: " in err
    assert "Written (complete): a.nii.gz, c.nii.gz, d.nii.gz" in err
    assert outputs(tmp_path / "all") == ["a.nii.gz", "c.nii.gz", "d.nii.gz"]
    # the part holding the corrupt case names itself and its cases in the error
    assert main([*argv, f"output={tmp_path / 'p2'}", "part=2/2"]) == 2
    err = capsys.readouterr().err
    assert "part 2/2: 2 of 4 case(s) (b, d): 1 of 2 case(s) failed" in err
    assert outputs(tmp_path / "p2") == ["d.nii.gz"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("part=3/2", "I=3 is outside 1..2"),
        ("part=0/2", "I=0 is outside 1..2"),
        ("part=a/b", "expected I/N"),
        ("part=1/0", "N must be at least 1"),
        ("part=2", "expected I/N"),
        ("workers=-1", "workers: got -1"),
    ],
)
def test_bad_part_or_workers_is_one_line_naming_the_key_and_the_fix(value, says, capsys):
    # refused before any checkpoint or file is opened
    argv = ["predict", "ckpt=none.ckpt", "input=none", "output=none", value]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert says in lines[0] and value.split("=")[0] in lines[0] and "Fix:" in lines[0]
    assert not Path("none").exists()


def test_help_lists_part_and_workers_with_the_defaults_predict_uses(capsys):
    assert main(["predict", "--help"]) == 0
    rows = dict(re.findall(r"^  (\w+)=\s+(\S+)", capsys.readouterr().out, flags=re.M))
    used = PredictOptions()
    assert rows["part"] == used.part == "1/1" and rows["workers"] == str(used.workers) == "0"


def test_read_ahead_is_bounded_in_order_and_keeps_errors_per_item():
    started: list[int] = []

    def load(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("item 1 is bad")
        return i * 10

    with closing(read_ahead(range(10), load, workers=2)) as ahead:
        item, get = next(ahead)
        assert (item, get()) == (0, 0)
        time.sleep(0.2)
        assert sorted(started) == [0, 1, 2]  # the current one and K=2 ahead, no more
        item, get = next(ahead)
        with pytest.raises(ValueError, match="item 1 is bad"):
            get()
        assert [(i, g()) for i, g in ahead if i < 5] == [(2, 20), (3, 30), (4, 40)]
    # workers=0: loaded when asked, in the caller's thread
    started.clear()
    lazy = read_ahead(range(3), load, workers=0)
    item, get = next(lazy)
    assert started == [] and get() == 0 and started == [0]
