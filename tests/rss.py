"""The resident-set instrument the memory tests share: a fresh child process whose kernel peak
(``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs``) follows the live
tensors, because glibc is told to mmap every block above 64 KiB and return freed memory at once.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# glibc: mmap every block above 64 KiB and return freed memory at once, so the resident set
# follows the live tensors; one thread, so no per-thread arenas or scratch.
CHILD_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "0",
    "MALLOC_ARENA_MAX": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def status(key: str) -> int:
    """``key`` (e.g. ``VmRSS``, ``VmHWM``) of ``/proc/self/status``, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) * 1024
    raise KeyError(key)


def settle() -> int:
    """Free what is garbage, hand freed heap back to the kernel, reset the peak; the RSS."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    return status("VmRSS")


def run_child(script: Path, case: dict) -> dict:
    """Runs ``script`` with ``case`` as JSON in a fresh process under :data:`CHILD_ENV`; the
    JSON object its last output line prints."""
    out = subprocess.run(
        [sys.executable, str(script), json.dumps(case)],
        env={**os.environ, **CHILD_ENV, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode:
        raise RuntimeError(f"{script.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])
