"""Real processes on one cache: two at once, and one killed in the middle of a write."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from segkit.data import preprocess_dataset

CHILD = Path(__file__).with_name("preprocess_child.py")


def _start(root: Path, cache: Path, log: Path, *pause: object) -> subprocess.Popen:
    """`preprocess_child.py` in a new interpreter, stderr to `log`."""
    args = [sys.executable, str(CHILD), str(root), str(cache), *map(str, pause)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)


def _wait(until: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def _cases_dir(cache: Path) -> Path:
    (settings_dir,) = cache.iterdir()
    return settings_dir / "cases"


def test_two_processes_preprocess_one_dataset_at_once(make_msd, tmp_path):
    root = make_msd(shapes=((9, 11, 7), (13, 10, 5), (8, 7, 9), (7, 7, 7)))
    cache, signals = tmp_path / "cache", tmp_path / "signals"
    signals.mkdir()
    # A holds its first array in a live temporary file while B starts on the same cache.
    a = _start(root, cache, tmp_path / "a.log", 1, signals)
    try:
        _wait(lambda: (signals / "ready").exists() or a.poll() is not None, "A's first write")
        assert list(_cases_dir(cache).glob(".*.tmp-*")), "A should hold a temporary file"
        b = _start(root, cache, tmp_path / "b.log")
        b_log = tmp_path / "b.log"
        # B must wait for A instead of deleting A's temporary file as a "leftover".
        _wait(
            lambda: b.poll() is not None or "waiting for it to finish" in b_log.read_text(),
            "B to wait for A's lock",
        )
        assert "waiting for it to finish" in b_log.read_text(), "B never waited for A's lock"
        assert b.poll() is None, "B finished while A still held the lock"
    finally:
        (signals / "go").touch()
    assert a.wait(60) == 0, (tmp_path / "a.log").read_text()
    assert b.wait(60) == 0, b_log.read_text()
    assert "FileNotFoundError" not in (tmp_path / "a.log").read_text()

    cases = _cases_dir(cache)
    serial = preprocess_dataset(root, cache_dir=tmp_path / "serial", num_workers=0, progress=False)
    assert sorted(p.name for p in cases.parent.iterdir()) == sorted(
        p.name for p in serial.cache_dir.iterdir()
    )
    for name in ("fingerprint.json", "preprocessor.json"):
        assert json.loads((cases.parent / name).read_text()) == json.loads(
            (serial.cache_dir / name).read_text()
        )
    for cid in serial.case_ids:
        for kind in ("image", "label", "fg"):
            np.testing.assert_array_equal(
                np.load(cases / f"{cid}_{kind}.npy"),
                np.load(serial.cases_dir / f"{cid}_{kind}.npy"),
            )
    assert not list(cases.glob(".*.tmp-*"))


_HOLDER = """
import sys, time
from pathlib import Path
from segkit.data import cache

lock, signals, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with cache.file_lock(lock, waiting=name + " found the lock taken"):
    (signals / (name + ".acquired")).write_text(str(time.monotonic_ns()))
    while not (signals / (name + ".go")).exists():
        time.sleep(0.01)
    (signals / (name + ".releasing")).write_text(str(time.monotonic_ns()))
"""


def _hold_lock(lock: Path, signals: Path, name: str) -> subprocess.Popen:
    """A process that takes the cache's lock, stamps the moment (a clock shared by every
    process), holds it until SIGNALS/NAME.go exists, stamps again and lets go."""
    args = [sys.executable, "-c", _HOLDER, str(lock), str(signals), name]
    return subprocess.Popen(args, stderr=(signals / f"{name}.log").open("w"), text=True)


def test_second_process_waits_on_the_lock_until_the_first_lets_go(tmp_path):
    lock, signals = tmp_path / "settings" / ".lock", tmp_path / "signals"
    signals.mkdir()
    a = _hold_lock(lock, signals, "A")
    try:
        _wait(lambda: (signals / "A.acquired").exists() or a.poll() is not None, "A's lock")
        (signals / "B.go").touch()  # B lets go at once, once it has the lock
        b = _hold_lock(lock, signals, "B")
        # B is blocked (it said so) or, without a working lock, already inside
        _wait(
            lambda: (
                "found the lock taken" in (signals / "B.log").read_text()
                or (signals / "B.acquired").exists()
                or b.poll() is not None
            ),
            "B to reach the lock",
        )
    finally:
        (signals / "A.go").touch()
    assert a.wait(60) == 0 and b.wait(60) == 0, (signals / "B.log").read_text()
    assert "B found the lock taken" in (signals / "B.log").read_text()
    # the order, not a duration: B got the lock only after A had finished holding it
    stamps = [int((signals / n).read_text()) for n in ("A.acquired", "A.releasing", "B.acquired")]
    assert stamps[0] < stamps[1] < stamps[2], stamps


def test_killed_process_leaves_no_half_case_and_its_leftovers_are_cleaned(make_msd, tmp_path):
    root = make_msd()
    cache, signals = tmp_path / "cache", tmp_path / "signals"
    signals.mkdir()
    # Writes 1-3 are case_00's arrays; write 4 (case_01's image) is killed mid-way.
    a = _start(root, cache, tmp_path / "a.log", 4, signals)
    _wait(lambda: (signals / "ready").exists() or a.poll() is not None, "the 4th write")
    a.kill()
    a.wait(30)
    cases = _cases_dir(cache)
    assert [p.name for p in cases.glob(".*.tmp-*")] != []  # the dead process's temporary
    assert (cases / "case_00.json").is_file()
    assert not (cases / "case_01.json").exists()  # not marked done
    assert not (cases / "case_01_image.npy").exists()  # never a half-written final name
    stamp = (cases / "case_00_image.npy").stat().st_mtime_ns

    # The kernel released the dead process's lock: this neither waits nor fails.
    prep = preprocess_dataset(root, cache_dir=cache, num_workers=0, progress=False)
    assert not list(cases.glob(".*.tmp-*"))  # leftovers removed
    assert (cases / "case_00_image.npy").stat().st_mtime_ns == stamp  # done case kept
    assert prep.case_ids == ("case_00", "case_01", "case_02")
    for cid in prep.case_ids:
        props = json.loads((cases / f"{cid}.json").read_text())
        assert np.load(cases / f"{cid}_label.npy").shape == tuple(props["resampled_shape"])
