"""The engine's memory, measured: the kernel's resident-set peak of a fresh process (not the
engine's estimate) stays under ``max_memory_gb``, and beyond the input volume and the label
map it does not grow with the volume's extent along any axis.

The instrument: ``tests/inference/engine_memory_child.py`` under ``tests.rss.CHILD_ENV``.
Its sensitivity is part of the test: with the accumulator left out of the estimate (what
``break_estimate`` does in the child) the planner keeps whole-plane columns, which the
budget cannot hold, and the measured peak exceeds it (seen: 808 MiB against 600 MiB; with the
estimate intact, 455 MiB).
"""

from __future__ import annotations

from pathlib import Path

from segkit.inference.engine.memory import GiB
from tests.rss import run_child

MiB = 2**20
CLASSES, PATCH = 32, [32, 32, 32]


def test_measured_peak_stays_under_the_budget_and_flat_in_every_axis():
    budget = 0.6
    big = [64, 320, 320]  # one plane of 32 classes would take 430 MB of accumulator
    small = 4 * MiB  # accumulator limit for the per-axis runs (columns of 32×32 voxels)
    runs = [
        {"size": big, "budget": budget},
        {"size": [128, 64, 64], "accumulator_bytes": small},
        {"size": [512, 64, 64], "accumulator_bytes": small},
        {"size": [128, 256, 64], "accumulator_bytes": small},
        {"size": [128, 64, 256], "accumulator_bytes": small},
        {"size": [128, 256, 64], "accumulator_bytes": 2**40},  # no columns: the plane grows
        {"size": big, "budget": budget, "break_estimate": True},
    ]
    out = run_child(
        Path(__file__).with_name("engine_memory_child.py"),
        {"classes": CLASSES, "patch": PATCH, "runs": runs},
    )["runs"]
    fits, base, axis0, axis1, axis2, whole_plane, broken = out
    assert fits["peak"] <= budget * GiB, fits
    assert fits["estimate"] <= budget * GiB
    # the instrument sees a wrong estimate: the same budget, exceeded
    assert broken["peak"] > budget * GiB, broken
    # each axis 4× longer adds 3·128·64² voxels; the peak above the input volume may grow by
    # the label map (1 byte a voxel) and not by classes × plane (32 × 4 B × 63 rows × 3·64²
    # = 95 MiB would be one plane's accumulator growing). The base is long enough along axis 0
    # for full window batches in every column (a shorter column runs smaller batches).
    grown_voxels = 3 * 128 * 64**2
    for longer in (axis0, axis1, axis2):
        assert longer["above"] - base["above"] <= grown_voxels * 1 + 8 * MiB, (longer, base)
    plane_growth = CLASSES * 4 * 63 * 3 * 64 * 64
    assert whole_plane["above"] - base["above"] > 0.5 * plane_growth, (whole_plane, base)
