"""A full disk and a SIGKILL during ``segkit predict``: one clear line, nothing partial,
and the same command again finishes the job, skipping what was already written.

The sample of ``benchmarks/faults.py`` (which also covers preprocessing, training, cv and
select, at many more points). Kill points are file events counted by the injector, never
moments in time.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.inference.conftest import make_checkpoint, write_image
from tests.reliability.faults import corrupt_files, count_events, hashes, run, segkit

CASES = ("a", "b", "c")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, three input cases and a clean run's outputs to compare with."""
    base = tmp_path_factory.mktemp("faults")
    ckpt = make_checkpoint(base / "model.ckpt", epochs=1)
    for n, case in enumerate(CASES):
        write_image(base / "in" / f"{case}.nii.gz", seed=n)
    clean = run(_predict(base, base / "clean"), cwd=base)
    assert clean.returncode == 0, clean.stderr[-2000:]
    return base, ckpt


def _predict(base: Path, out: Path, *extra: str) -> list[str]:
    return segkit(
        "predict", f"ckpt={base / 'model.ckpt'}", f"input={base / 'in'}", f"output={out}",
        "save_probabilities=true", "progress=false", "device=cpu", *extra,
    )  # fmt: skip


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def _finished(base: Path, out: Path, endings=("nii.gz", "npz")) -> None:
    """Every case written, complete, and equal to the clean run's."""
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted(f"{c}.{ending}" for c in CASES for ending in endings)
    assert corrupt_files(out) == {}
    clean, got = _labels(base / "clean"), _labels(out)
    assert clean.keys() == got.keys()
    for name in clean:
        np.testing.assert_array_equal(got[name], clean[name])


def test_a_full_disk_stops_predict_with_one_line_and_the_rerun_finishes(setup, tmp_path):
    base, _ = setup
    inputs = hashes(base / "in", base / "model.ckpt")
    out = tmp_path / "out"
    labels_only = "save_probabilities=false"
    # 300 bytes: a label map (~550 bytes compressed) does not fit
    full = run(_predict(base, out, labels_only), cwd=base, fsize=300)
    line = full.refusal()
    assert line is not None, full.stderr[-3000:]
    assert "out/a.nii.gz: cannot be written" in line and "File too large" in line
    assert "Fix: free space there" in line and "run the same command again" in line
    # nothing under a final name, no temporary left, no input changed
    assert list(out.iterdir()) == []
    assert hashes(base / "in", base / "model.ckpt") == inputs

    again = run(_predict(base, out, labels_only), cwd=base)
    assert again.returncode == 0, again.stderr[-3000:]
    _finished(base, out, endings=("nii.gz",))


def test_a_full_disk_during_probabilities_names_the_case_it_was_writing(setup, tmp_path):
    base, _ = setup
    out = tmp_path / "out"
    # 4 kB: the probabilities' float16 temporary (~34 kB) does not fit
    full = run(_predict(base, out), cwd=base, fsize=4096)
    line = full.refusal()
    assert line is not None, full.stderr[-3000:]
    assert "out/a.nii.gz: cannot be written" in line
    assert list(out.iterdir()) == []


def test_a_kill_during_predict_leaves_only_complete_files_and_the_rerun_skips_them(setup, tmp_path):
    base, _ = setup
    # the kill point: the event after case b's outputs are in place (a counted run finds it)
    log = tmp_path / "events.log"
    counted = run(_predict(base, tmp_path / "counted"), cwd=base, event_log=log)
    assert counted.returncode == 0, counted.stderr[-3000:]
    rows = log.read_text().splitlines()
    assert len(rows) == count_events(log)
    b_done = max(i for i, r in enumerate(rows) if r.endswith("counted/b.npz"))
    # killed at the event after b's .npz was renamed into place: a and b are done, c is not
    out = tmp_path / "out"
    killed = run(_predict(base, out), cwd=base, kill_at=b_done + 2)
    assert killed.killed, killed.stderr[-3000:]
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["a.nii.gz", "a.npz", "b.nii.gz", "b.npz"]
    assert corrupt_files(out) == {}
    before = {p: p.stat().st_mtime_ns for p in out.glob("[ab].*")}

    again = run(_predict(base, out), cwd=base)
    assert again.returncode == 0, again.stderr[-3000:]
    said = again.stdout.splitlines()
    assert [line.split(":")[0] for line in said if "skipped" in line] == ["a", "b"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("[ab].*")} == before  # not rewritten
    _finished(base, out)


def test_a_prediction_of_other_options_is_overwritten_not_skipped(setup, tmp_path):
    base, _ = setup
    out = tmp_path / "out"
    first = run(_predict(base, out, "tta=true"), cwd=base)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run(_predict(base, out), cwd=base)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" not in again.stdout
    _finished(base, out)
