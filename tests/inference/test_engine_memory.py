"""The engine's memory, measured: the kernel's resident-set peak of a fresh process (not the
engine's estimate) stays under ``max_memory_gb``, and beyond the input volume and the label
map it does not grow with the volume's extent along any axis.

The instrument: ``tests/inference/engine_memory_child.py`` under ``tests.rss.CHILD_ENV``.
Broken on purpose once (2026-12-05): with the accumulator term left out of
``estimate_bytes``, the planner kept one whole-plane column for the budget case below, and the
measured peak was 753.6 MiB against the 0.6 GiB (614 MiB) budget, so the first assertion
failed; with the estimate intact it was 432.5 MiB (6 columns, 1.24× windows run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segkit.inference.engine.memory import GiB
from tests.rss import run_child

MiB = 2**20
CLASSES, PATCH = 64, [32, 32, 32]


def _peaks(runs: list[dict]) -> list[dict]:
    return run_child(
        Path(__file__).with_name("engine_memory_child.py"),
        {"classes": CLASSES, "patch": PATCH, "runs": runs},
    )["runs"]


def test_measured_peak_stays_under_the_budget():
    budget = 0.6
    big = [32, 224, 224]  # one plane of 64 classes takes 411 MB of accumulator (32 rows)
    # overlap 0.5: columns cost windows, so only the budget makes the planner split
    (fits,) = _peaks([{"size": big, "budget": budget, "overlap": 0.5}])
    assert fits["peak"] <= budget * GiB, fits
    assert fits["estimate"] <= budget * GiB


@pytest.mark.slow  # ~35 s: six predictions (the curves: benchmarks/bench_inference_memory.py)
def test_measured_peak_is_flat_in_every_axis():
    # per-axis runs at overlap 0: columns at window starts are free, so the accumulator spans
    # one 32×32 column whatever the plane (an accumulator limit of 4 MiB would force the same)
    small = 4 * MiB
    runs = [
        {"size": [128, 64, 64], "accumulator_bytes": small},
        {"size": [512, 64, 64], "accumulator_bytes": small},
        {"size": [128, 256, 64], "accumulator_bytes": small},
        {"size": [128, 64, 256], "accumulator_bytes": small},
        # overlap 0.5 and no accumulator limit: no columns (they would cost windows), so the
        # accumulator spans the plane and grows with it
        {"size": [128, 64, 64], "accumulator_bytes": 2**40, "overlap": 0.5},
        {"size": [128, 256, 64], "accumulator_bytes": 2**40, "overlap": 0.5},
    ]
    base, axis0, axis1, axis2, plane_base, whole_plane = _peaks(runs)
    # each axis 4× longer adds 3·128·64² voxels; the peak above the input volume may grow by
    # the label map (1 byte a voxel), not by classes × plane. The base is long enough along axis 0
    # for full window batches in every column (a shorter column runs smaller batches).
    grown_voxels = 3 * 128 * 64**2
    allowed = grown_voxels * 1 + 8 * MiB
    for longer in (axis0, axis1, axis2):
        assert longer["above"] - base["above"] <= allowed, (longer, base)
    # the instrument sees an accumulator that spans the plane (33 rows × 256×64 against
    # 39 rows × 64×64 of 64 float32 classes: 97 MiB more) far above that allowance
    grown = whole_plane["above"] - plane_base["above"]
    assert grown > 5 * allowed, (whole_plane, plane_base)
