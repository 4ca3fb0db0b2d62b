"""What a prediction allocates, and the tile layout and window batch that fit a budget.

Like the planner's training estimate (:mod:`segkit.planner.memory`), the bytes are counted
from the plan: per network the column accumulator (classes × its rows × the column, float32),
the batch of windows (inputs, outputs, mirrored outputs) and the network's activations for
it (:func:`~segkit.inference.engine.settings.inference_bytes`, a rough upper bound); one
finalised tile per network, the averaged probabilities and the labels of a tile; the input
volume and the label volume; plus the process' fixed runtime (``RUNTIME_BYTES``: PyTorch's
libraries and allocator caches, measured as the resident set of a process that has run one
small window). ``benchmarks/bench_inference_memory.py`` prints the estimate beside the
measured resident peak, and ``tests/inference/test_engine_memory.py`` holds the measured
peak under the budget.

Layouts are ranked by the windows they run (a window crossing a column boundary runs once per
column it touches) and, among layouts that run as many, by the smallest columns: at overlap 0
on windows that tile the volume every split at a window start is free, so the columns are as
small as the windows. Without a budget the first layout whose accumulator is under
``ACCUMULATOR_BYTES`` is taken, and a default window batch (``sw_batch_size`` not given) is
shrunk until the batch's outputs are under it too (a 105-class network's 64×128×128 window
alone outputs 440 MB: one window a call, as nnU-Net runs); with ``max_memory_gb`` the first
layout and the largest window batch whose estimate fits; where nothing fits, the error names
the smallest budget that works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from segkit.errors import ConfigError
from segkit.inference.engine.settings import Decision, inference_bytes
from segkit.inference.engine.sliding import Layout, ModelRun
from segkit.inference.engine.windows import window_starts

GiB = 2**30
RUNTIME_BYTES = int(0.45 * GiB)
ACCUMULATOR_BYTES = 256 * 2**20
"""Without ``max_memory_gb``: the most one network's column accumulator may take."""
_TILE_BYTES = 8 * 2**20  # float32 logits of one finalised tile (rows are chosen for it)
_SPLITS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


@dataclass(frozen=True)
class InferencePlan:
    """What a prediction of one volume allocates.

    Attributes:
        decisions: per network, its mode and window.
        layout: the output tiles.
        batches: per network, windows per forward call.
        estimate: estimated peak bytes of the process.
        windows_run: forward windows per volume over all networks (before mirroring).
        windows: windows in the networks' grids (what a loop without columns runs).
        budget: the budget in bytes, None if none was given.
    """

    decisions: tuple[Decision, ...]
    layout: Layout
    batches: tuple[int, ...]
    estimate: int
    windows_run: int
    windows: int
    budget: int | None = None

    def describe(self) -> str:
        text = f"{self.layout.describe()}, sw_batch_size={max(self.batches)}"
        if self.windows_run > self.windows:
            text += f", {self.windows_run / self.windows:.2f}× windows run (column borders)"
        text += f", estimated peak {self.estimate / GiB:.2f} GiB"
        if self.budget is not None:
            text += f" (max_memory_gb={self.budget / GiB:g})"
        return text


def _windows(runs: Sequence[ModelRun], decisions: Sequence[Decision], size) -> list[tuple]:
    ndim = len(size)
    return [
        tuple(min(w, s) for w, s in zip(r.window(d, ndim), size)) for r, d in zip(runs, decisions)
    ]


def _split(size: int, window: int, overlap: float, m: int) -> tuple[int, ...]:
    """``m`` columns along an axis, bounded at window starts (as even as the starts allow)."""
    starts = window_starts(size, window, overlap)
    n = len(starts)
    inner = sorted({starts[round(i * n / m)] for i in range(1, m)} - {0})
    return (0, *inner, size)


def _layouts(size, window, overlap, classes: int) -> list[Layout]:
    """Candidate layouts, split along the axes after the first at the first network's
    window starts."""
    options_per_axis = []
    for s, w in zip(size[1:], window[1:]):
        n = len(window_starts(s, w, overlap))
        ms = sorted({m for m in _SPLITS if m <= n} | {n})
        options_per_axis.append(sorted({_split(s, w, overlap, m) for m in ms}, key=len))
    out = []
    for cols in _product(options_per_axis):
        plane = math.prod(max(b - a for a, b in zip(c[:-1], c[1:])) for c in cols)
        rows = max(1, min(int(window[0]), _TILE_BYTES // max(1, 4 * classes * plane)))
        out.append(Layout(tuple(size), rows, tuple(cols)))
    return out


def _product(options: list[list]) -> list[tuple]:
    out: list[tuple] = [()]
    for opts in options:
        out = [o + (x,) for o in out for x in opts]
    return out


def estimate_bytes(
    runs: Sequence[ModelRun],
    decisions: Sequence[Decision],
    layout: Layout,
    batches: Sequence[int],
    *,
    channels: int,
    classes: int,
    label_bytes: int,
    probabilities: bool,
    activations: Sequence[int] | None = None,
) -> int:
    """Estimated peak bytes of a prediction of one volume (see the module).

    ``activations``: per network, :func:`window_activations` (computed here when None).
    """
    if activations is None:
        activations = window_activations(runs, decisions)
    size = layout.size
    voxels = math.prod(size)
    plane = math.prod(layout.column_shape)
    tile = layout.rows * plane
    total = RUNTIME_BYTES + channels * voxels * 4 + voxels * label_bytes
    # one finalised tile per network, the summed and averaged probabilities, int64 labels,
    # the float64 normaliser and its float32 copy (and a float16 copy for a probability file)
    total += (len(runs) + 2) * classes * tile * 4 + tile * 20
    if probabilities:
        total += classes * tile * 2
    windows = _windows(runs, decisions, size)
    for run, window, batch, act in zip(runs, windows, batches, activations):
        win = math.prod(window)
        passes = 2 if run.settings.tta else 1  # the output and one mirrored output
        total += classes * layout.accumulator_rows(window) * plane * 4
        total += batch * (channels * win * 4 + passes * classes * win * 4 + act) + win * 4
    return int(total)


def window_activations(runs: Sequence[ModelRun], decisions: Sequence[Decision]) -> list[int]:
    """Per network, the activation bytes of one window's forward pass."""
    return [inference_bytes(r.net, r.input_window(d)) for r, d in zip(runs, decisions)]


def plan_inference(
    runs: Sequence[ModelRun],
    decisions: Sequence[Decision],
    *,
    size: Sequence[int],
    channels: int,
    classes: int,
    label_bytes: int,
    budget: int | None = None,
    probabilities: bool = False,
) -> InferencePlan:
    """The layout and window batches for a prediction (see the module).

    Raises:
        ConfigError: nothing fits ``budget``; names the smallest budget that works.
    """
    size = tuple(int(s) for s in size)
    windows = _windows(runs, decisions, size)
    first = decisions[0]
    layouts = _layouts(size, windows[0], first.overlap, classes)

    def run_count(layout: Layout) -> int:
        return sum(layout.windows_run(w, d.overlap) for w, d in zip(windows, decisions))

    grid = sum(
        math.prod(len(window_starts(s, w, d.overlap)) for s, w in zip(size, win))
        for win, d in zip(windows, decisions)
    )
    requested = [r.batch for r in runs]
    activations = window_activations(runs, decisions)

    def plan(layout: Layout, batches: Sequence[int]) -> InferencePlan:
        est = estimate_bytes(
            runs,
            decisions,
            layout,
            batches,
            channels=channels,
            classes=classes,
            label_bytes=label_bytes,
            probabilities=probabilities,
            activations=activations,
        )
        return InferencePlan(
            tuple(decisions), layout, tuple(batches), est, run_count(layout), grid, budget
        )

    # the fewest windows run first and, among layouts that run as many, the smallest columns:
    # splitting costs nothing where no window crosses the boundaries
    ranked = sorted(layouts, key=lambda lay: (run_count(lay), math.prod(lay.column_shape)))
    if budget is None:
        batches = [
            r.batch
            if r.settings.sw_batch_size is not None
            else max(1, min(r.batch, ACCUMULATOR_BYTES // (classes * math.prod(w) * 4)))
            for r, w in zip(runs, windows)
        ]
        for layout in ranked:
            acc = max(
                classes * layout.accumulator_rows(w) * math.prod(layout.column_shape) * 4
                for w in windows
            )
            if acc <= ACCUMULATOR_BYTES:
                return plan(layout, batches)
        return plan(min(layouts, key=lambda lay: math.prod(lay.column_shape)), batches)
    for layout in ranked:
        for b in range(max(requested), 0, -1):
            candidate = plan(layout, [min(b, r) for r in requested])
            if candidate.estimate <= budget:
                return candidate
    smallest = min((plan(layout, [1] * len(runs)) for layout in layouts), key=lambda p: p.estimate)
    need = math.ceil(smallest.estimate / GiB * 10) / 10
    win = "×".join(map(str, windows[0]))
    raise ConfigError(
        f"max_memory_gb={budget / GiB:g}: too small to predict this case (window {win}, "
        f"{classes} classes, volume {'×'.join(map(str, size))}): the smallest budget that "
        f"works is max_memory_gb={need:g} (sw_batch_size=1, {smallest.layout.describe()}). "
        f"Fix: max_memory_gb={need:g} or more"
    )
