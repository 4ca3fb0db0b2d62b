"""The memory a streamed prediction needs, and the settings that fit ``max_memory_gb``.

Like the planner's training estimate (:mod:`segkit.planner.memory`), the bytes are counted
from the plan: the accumulator (classes × the rows the schedule keeps live × the other two
axes, float32 or float16), the batch of windows, the network's activations for it
(:func:`~segkit.inference.engine.inference_bytes`, a rough upper bound), the finalised
blocks, the input volume and the label volume, plus the process' fixed runtime
(``_RUNTIME_BYTES``: PyTorch's libraries and allocator caches, measured as the RSS of a
process that has run one small window). ``benchmarks/bench_inference_memory.py`` prints the
estimate beside the measured peak.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from segkit.errors import ConfigError
from segkit.inference.engine import Decision, inference_bytes

GiB = 2**30
_RUNTIME_BYTES = int(0.45 * GiB)
_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class StreamPlan:
    """What a streamed prediction allocates.

    Attributes:
        sw_batch_size: windows per forward call.
        accumulate: accumulator dtype name (``float32`` or ``float16``).
        block_rows: rows finalised at a time along ``axis``.
        slices: slices per call of a 2D network on a volume.
        axis: the streamed volume axis.
        estimate: estimated peak bytes of the process.
        budget: the budget in bytes, None if none was given.
    """

    sw_batch_size: int
    accumulate: str
    block_rows: int
    slices: int
    axis: int
    estimate: int
    budget: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.accumulate]

    def describe(self) -> str:
        text = (
            f"streamed along axis {self.axis} in blocks of {self.block_rows} row(s), "
            f"sw_batch_size={self.sw_batch_size}, {self.accumulate} accumulation, "
            f"estimated peak {self.estimate / GiB:.2f} GiB"
        )
        if self.budget is not None:
            text += f" (max_memory_gb={self.budget / GiB:g})"
        return text


def stream_bytes(
    runs: Sequence,
    decisions: Sequence[Decision],
    *,
    size: Sequence[int],
    channels: int,
    classes: int,
    label_bytes: int,
    axis: int,
    block: int,
    batch: int,
    accumulate: str,
    slices: int,
    rows_of: Callable[..., int],
) -> int:
    """Estimated peak bytes of :func:`~segkit.inference.stream.stream_predict`."""
    voxels = math.prod(size)
    plane = voxels // size[axis]
    acc_bytes = _DTYPES[accumulate].itemsize
    total = _RUNTIME_BYTES + channels * voxels * 4 + voxels * label_bytes
    # finalising one block: every model's logits, one model's and the summed probabilities,
    # int64 labels, the float64 normaliser slice and its float32 copy
    total += (len(runs) + 2) * classes * block * plane * 4 + block * plane * 20
    for run, d in zip(runs, decisions):
        tta = 2 if run.settings.tta else 1
        win = math.prod(d.window)
        if run.is_2d:
            plane2 = math.prod(d.size)
            per = batch if d.mode == "sliding" else slices
            total += (2 * slices + block) * classes * plane2 * 4 * tta
            total += per * (inference_bytes(run.net, d.window) + channels * win * 4 * tta)
        elif d.mode == "whole":
            total += classes * voxels * 4 * tta + inference_bytes(run.net, size)
            total += channels * voxels * 4 * (tta - 1)
        else:
            cap = rows_of(size, d.window, d.overlap, batch, run.settings.tta, block)
            total += classes * cap * (voxels // size[0]) * acc_bytes
            total += batch * (inference_bytes(run.net, d.window) + channels * win * 4 * tta)
            total += batch * classes * win * 4 * tta + win * (20 if run.settings.tta else 4)
    return int(total)


def plan_stream(
    runs: Sequence,
    decisions: Sequence[Decision],
    *,
    size: Sequence[int],
    channels: int,
    classes: int,
    label_bytes: int,
    axis: int,
    block: int,
    accumulate: str,
    budget: int | None,
    slices: int,
    rows_of: Callable[..., int],
) -> StreamPlan:
    """The largest window batch (at most the requested one) and the most precise
    accumulation that fit ``budget`` bytes; the requested settings when there is no budget.

    Raises:
        ConfigError: not even one window with float16 accumulation fits; names the
            smallest budget that works.
    """
    requested = max(r.settings.sw_batch_size for r in runs)
    dtypes = ["float32", "float16"] if accumulate == "auto" else [accumulate]
    is_2d = any(r.is_2d for r in runs)
    slice_options = sorted({slices, *(s for s in (16, 8, 4, 2, 1) if s < slices)}, reverse=True)

    def estimate(batch: int, dtype: str, n_slices: int) -> int:
        return stream_bytes(
            runs,
            decisions,
            size=size,
            channels=channels,
            classes=classes,
            label_bytes=label_bytes,
            axis=axis,
            block=block,
            batch=batch,
            accumulate=dtype,
            slices=n_slices,
            rows_of=rows_of,
        )

    def plan(batch: int, dtype: str, n_slices: int) -> StreamPlan:
        return StreamPlan(
            sw_batch_size=batch,
            accumulate=dtype,
            block_rows=block,
            slices=n_slices,
            axis=axis,
            estimate=estimate(batch, dtype, n_slices),
            budget=budget,
        )

    if budget is None:
        return plan(requested, dtypes[0], slices)
    for dtype in dtypes:
        for n_slices in slice_options if is_2d else [slices]:
            for batch in range(requested, 0, -1):
                if estimate(batch, dtype, n_slices) <= budget:
                    return plan(batch, dtype, n_slices)
    smallest = estimate(1, dtypes[-1], 1 if is_2d else slices)
    need = math.ceil(smallest / GiB * 10) / 10
    win = "×".join(map(str, decisions[0].window))
    raise ConfigError(
        f"max_memory_gb={budget / GiB:g}: too small to predict this case (window {win}, "
        f"{classes} classes, volume {'×'.join(map(str, size))}): the smallest budget that "
        f"works is max_memory_gb={need:g} (sw_batch_size=1, {dtypes[-1]} accumulation). "
        f"Fix: max_memory_gb={need:g} or more"
    )
