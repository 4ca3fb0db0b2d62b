"""A real process that preprocesses a dataset, for the concurrency and crash tests.

    python preprocess_child.py ROOT CACHE_DIR [PAUSE_AT SIGNAL_DIR]

With PAUSE_AT, the PAUSE_AT-th array this process writes is written to its
temporary file and then held there, as on a very slow disk: the process creates
SIGNAL_DIR/ready and waits until SIGNAL_DIR/go exists before the file is renamed.
That gives a test a live temporary file at a known moment; nothing else changes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from segkit.data.cache import preprocess_dataset


def _hold_nth_write(n: int, signals: Path) -> None:
    real_save = np.save
    calls = [0]

    def save(file, arr, *args, **kwargs):
        real_save(file, arr, *args, **kwargs)
        calls[0] += 1
        if calls[0] == n:
            file.flush()
            (signals / "ready").touch()
            while not (signals / "go").exists():
                time.sleep(0.02)

    np.save = save


if __name__ == "__main__":
    root, cache = Path(sys.argv[1]), Path(sys.argv[2])
    if len(sys.argv) > 3:
        _hold_nth_write(int(sys.argv[3]), Path(sys.argv[4]))
    prep = preprocess_dataset(root, cache_dir=cache, num_workers=0, progress=False)
    print(prep.cache_dir)
