"""Atomic writes under a real crash: a process killed mid-write leaves the old file whole."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from segkit.fsio import save_json_atomic, save_npy_atomic, write_text_atomic

N = 1_000_000
# Rewrites the same file over and over with a new constant, as fast as it can.
WRITER = f"""
import sys
import numpy as np
from segkit.fsio import save_npy_atomic, write_text_atomic
path, kind = sys.argv[1], sys.argv[2]
k = 1
while True:
    if kind == "npy":
        save_npy_atomic(path, np.full({N}, k, dtype=np.int64))
    else:
        write_text_atomic(path, str(k % 10) * {N})
    k += 1
"""


@pytest.mark.parametrize("kind", ["npy", "text"])
def test_kill_mid_write_keeps_old_file_whole(tmp_path, kind):
    path = tmp_path / f"x.{kind}"
    if kind == "npy":
        save_npy_atomic(path, np.zeros(N, dtype=np.int64))
    else:
        write_text_atomic(path, "0" * N)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), kind])
    try:
        end = time.monotonic() + 60
        # let it replace the file a few times, then kill it while a temporary exists
        time.sleep(0.5)
        while not list(tmp_path.glob(".*.tmp-*")):
            assert proc.poll() is None and time.monotonic() < end
            time.sleep(0.001)
    finally:
        proc.kill()
        proc.wait(30)
    if kind == "npy":
        data = np.load(path)
        assert data.shape == (N,) and (data == data[0]).all()
    else:
        text = path.read_text()
        assert len(text) == N and set(text) == {text[0]}
    # only the final name and (possibly) the killed write's temporary are left
    assert {p.name for p in tmp_path.iterdir()} - {path.name} <= {
        p.name for p in tmp_path.glob(f".{path.name}.tmp-*")
    }


def test_temporary_names_are_unique_per_write(tmp_path):
    path = tmp_path / "a.json"
    save_json_atomic(path, {"a": 1})
    save_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_lock_on_a_filesystem_without_flock_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from segkit.fsio import file_lock

    def no_flock(fd, op):  # what Lustre mounted without flock answers
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    ran = []
    with file_lock(tmp_path / ".lock"):
        ran.append(True)
    assert ran == [True]
    assert "does not support file locks" in caplog.text
