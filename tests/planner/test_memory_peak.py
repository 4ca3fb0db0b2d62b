"""The memory model against a different instrument: the real peak of a training step.

For each case the planner's estimate (:func:`segkit.planner.training_memory`, from a plan traced
on the meta device) must bound the peak from above without wasting the budget:

    measured <= estimate <= 1.25 × measured

"measured" is the resident-set high-water mark of one training step (forward, Dice+CE with
deep supervision, backward, SGD step with momentum) in a fresh process
(``tests/planner/memory_child.py``) above a baseline taken before the network exists: the
kernel's count of touched pages, which knows nothing of autograd's saved tensors. The table
for the docs: ``python -m tests.planner.test_memory_peak`` (the full grid below).
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.rss import run_child
from tests.utils import preset_memory_estimate

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(),
    reason="the resident-set peak is read and reset through Linux's /proc/self",
)
CHILD = Path(__file__).with_name("memory_child.py")
UPPER = 1.25
# The presets, shrunk for a CPU (narrower, shallower, fewer blocks); block types, stems,
# shortcuts, skips, norms and upsampling are the preset's.
SMALL = ["model.depth=4", "model.channels=8", "model.max_channels=64"]
PRESETS = {
    "demo": [],  # plain conv blocks, instance norm, transposed convs, concat skips
    "resenc": [*SMALL, "model.blocks_per_stage=[1,2,2,2]"],
    "mednext_s": [
        *SMALL,
        "model.blocks_per_stage=[1,2,2,2]",
        "model.blocks_per_stage_decoder=[1,1,1]",
    ],
}
SIZES = ((20, 24, 16), (32, 28, 36))
BATCH = 2
GRID = [(m, p, s) for m in PRESETS for p in ("fp32", "bf16") for s in SIZES]
# The default run (about 5 CPU-seconds a case): the activation-dominated case and one bf16
# case; the plain network's fp32 peak is also checked in-process against the allocator
# (test_planner_memory.py). The whole grid: -m slow.
DEFAULT = [("resenc", "bf16", SIZES[0]), ("mednext_s", "fp32", SIZES[0])]


def _case(preset: str, precision: str, size: tuple[int, ...]) -> tuple[dict, object]:
    model, _, optimizer, estimate = preset_memory_estimate(
        [f"model={preset}", *PRESETS[preset]], size, BATCH, precision, "cpu"
    )
    child = dict(model=model, optimizer=optimizer, patch=list(size), batch=BATCH)
    return dict(child, precision=precision), estimate


def _measure(case: dict) -> dict:
    return run_child(CHILD, case)


def measure_all(keys: list[tuple]) -> dict[tuple, tuple[object, dict]]:
    """Estimate in this process, measure each case in its own child, two children at a time.

    Each child's peak is its own resident set, so children running side by side do not
    disturb each other's measurement.
    """
    cases = {k: _case(*k) for k in keys}
    with ThreadPoolExecutor(max_workers=min(len(keys), os.cpu_count() or 1, 3)) as pool:
        measured = dict(zip(cases, pool.map(_measure, [c for c, _ in cases.values()])))
    return {k: (cases[k][1], measured[k]) for k in keys}


@pytest.fixture(scope="module")
def peaks(request: pytest.FixtureRequest) -> dict:
    """Every case this session collected, measured at once (children run concurrently)."""
    keys = [
        item.callspec.params["key"]
        for item in request.session.items
        if item.module is request.module and "key" in getattr(item, "callspec", {}).params
    ]
    return measure_all(list(dict.fromkeys(keys)))


def _id(key: tuple) -> str:
    preset, precision, size = key
    return f"{preset}-{precision}-{'x'.join(map(str, size))}"


@pytest.mark.parametrize(
    "key",
    [pytest.param(k, id=_id(k), marks=() if k in DEFAULT else pytest.mark.slow) for k in GRID],
)
def test_estimate_bounds_a_fresh_process_resident_peak(peaks, key):
    estimate, m = peaks[key]
    # the instrument sees the tensors that persist between steps (weights, momentum, batch)
    assert m["resident_tensors"] <= m["resident"] <= 1.5 * m["resident_tensors"] + 2**20, m
    ratio = estimate.total / m["peak"]
    assert 1.0 <= ratio <= UPPER, (
        f"{_id(key)}: estimate {estimate.total / 2**20:.1f} MiB, measured "
        f"{m['peak'] / 2**20:.1f} MiB, ratio {ratio:.3f} (want 1 .. {UPPER}); parts in MiB: "
        + ", ".join(
            f"{f.name} {getattr(estimate, f.name) / 2**20:.1f}"
            for f in dataclasses.fields(estimate)
            if f.name not in ("batch_size", "params")
        )
    )


def main() -> None:
    """Print the table of the full grid (for the docs)."""
    print("| preset | precision | patch | params | estimate MiB | measured MiB | ratio |")
    print("|---|---|---|---:|---:|---:|---:|")
    for key in GRID:
        estimate, m = measure_all([key])[key]
        preset, precision, size = key
        print(
            f"| {preset} | {precision} | {'×'.join(map(str, size))} | {m['params']:,} | "
            f"{estimate.total / 2**20:.1f} | {m['peak'] / 2**20:.1f} | "
            f"{estimate.total / m['peak']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
