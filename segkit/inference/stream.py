"""Streamed prediction: label maps whose memory follows one slab, not the volume.

The non-streamed path (:func:`~segkit.inference.engine.infer`) keeps every class's float32
logits for the whole volume. Here windows are visited row by row along the **first spatial
axis** (the slowest axis of :func:`~segkit.inference.engine.window_grid`, so the windows of
one model without TTA come in exactly the non-streamed order and batches). The accumulator
of a model covers only the rows that windows still to come can touch; rows no window will
reach again are *finalised* in fixed blocks of :func:`block_rows` rows (divided by their
slice of the normaliser, turned into probabilities by the checkpoints' :class:`OutputHead`,
averaged over the models, turned into labels) and the accumulator moves on. What stays is
the label volume (1 or 2 bytes per voxel) and, on request, each block of probabilities is
handed to a consumer (``save_probabilities`` writes them to disk).

Exactness. One model without TTA: the same windows, batches, ``addcmul_`` and float64
per-axis normaliser sums as :func:`~segkit.inference.engine.sliding_window`, so every logit
is bitwise the non-streamed one. Both paths finalise in the same blocks
(:func:`finalise_logits` is the non-streamed side): PyTorch's CPU softmax rounds the last bit
differently where a tensor of another shape is split between threads, so equal logits give
equal labels only when the softmax sees equal blocks. With TTA every pass shares one
accumulator and each window is weighted by ``gaussian / normaliser`` of its pass (separable,
float64, then float32): the average of the passes without one accumulator per pass, equal
to the non-streamed result within float32 rounding. Ensembles keep one accumulator per model
(probabilities, not logits, are averaged). A 2D network on a volume streams slice chunks
along its slice axis; ``whole`` mode holds the whole volume's logits, so ``auto`` picks it
only where they fit the budget.

``accumulate="float16"`` halves the accumulators; they then hold the average logit (the
``gaussian / normaliser`` weighting), so the difference stays within a few float16 roundings
of the largest logit (measured in ``tests/inference/test_stream.py``: 5.8e-3 in probability
at logits up to 47, 0.04 % of labels changed).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segkit.errors import ConfigError
from segkit.inference.engine import (
    Decision,
    InferenceSettings,
    _as_logits,
    _default_budget,
    _gaussian_axes,
    _outer,
    _progress,
    _run,
    axis_sums,
    decide,
    gaussian_importance,
    mirror_axes,
    window_grid,
)
from segkit.inference.outputs import OutputHead
from segkit.inference.stream_memory import StreamPlan, plan_stream

ACCUMULATE = ("auto", "float32", "float16")
_BLOCK_BYTES = 8 * 2**20
# (axis, start, stop, probabilities (K, ...) of rows start:stop along axis) of one block
Consumer = Callable[[int, int, int, torch.Tensor], None]


def block_rows(channels: int, plane: int) -> int:
    """Rows per finalised block: about 8 MiB of float32 logits (at least one row)."""
    return max(1, _BLOCK_BYTES // max(1, 4 * channels * plane))


def _blocks(n: int, h: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + h)) for a in range(0, n, h)]


@dataclass(frozen=True)
class ModelRun:
    """One checkpoint of a streamed prediction.

    Attributes:
        net: the network in eval mode.
        patch_size: its training patch.
        settings: mode, overlap, window scale, TTA (``sw_batch_size`` may be overridden by
            the plan).
        slice_axis: for a 2D network on volumes, the sliced axis.
    """

    net: nn.Module
    patch_size: tuple[int, ...]
    settings: InferenceSettings
    slice_axis: int = 2

    @property
    def is_2d(self) -> bool:
        return getattr(getattr(self.net, "spec", None), "spatial_dims", 3) == 2

    def axis(self) -> int:
        """The volume axis streamed: the slice axis of a 2D net, else the first."""
        return self.slice_axis if self.is_2d else 0


@dataclass(frozen=True)
class StreamResult:
    """Labels on the preprocessed grid, and what ran.

    Attributes:
        labels: (*S) uint8/int16 (the head's label dtype), on the CPU.
        decisions: per model, the mode/window decision.
        plan: sizes chosen for the memory budget and the estimated peak.
    """

    labels: torch.Tensor
    decisions: list[Decision]
    plan: StreamPlan


def finalise_block(
    logits: Sequence[torch.Tensor], head: OutputHead
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities averaged over models and labels of one block of logits (K, ...).

    The same arithmetic and order as the non-streamed ensemble: sum of the models'
    probabilities, divided by their count.
    """
    total = None
    for block in logits:
        probs = head.probabilities(block, dim=0)
        total = probs if total is None else total.add_(probs)
    total = total / len(logits)
    return total, head.labels(total, dim=0)


def probabilities_in_blocks(
    logits: torch.Tensor, head: OutputHead, *, axis: int = 0, block: int | None = None
) -> torch.Tensor:
    """The non-streamed side: one model's whole-volume logits (K, *S) → probabilities,
    computed in the streamed path's blocks along ``axis`` (``block`` rows; None:
    :func:`block_rows`), so both round alike."""
    k, size = logits.shape[0], tuple(logits.shape[1:])
    h = block or block_rows(k, math.prod(size) // size[axis])
    probs = torch.empty((k, *size), dtype=torch.float32, device=logits.device)
    for a, b in _blocks(size[axis], h):
        part = logits.narrow(axis + 1, a, b - a).contiguous()
        probs.narrow(axis + 1, a, b - a).copy_(head.probabilities(part, dim=0))
    return probs


def _whole_rows(logits: torch.Tensor, axis: int, h: int) -> Iterator[torch.Tensor]:
    for a, b in _blocks(logits.shape[axis + 1], h):
        yield logits.narrow(axis + 1, a, b - a).contiguous()


def _schedule(
    size: Sequence[int], window: Sequence[int], overlap: float, batch: int, tta: bool
) -> list[tuple[tuple[int, ...], list[list[tuple[int, ...]]]]]:
    """Per pass (flip dims, chunks of window corners in original coordinates)."""
    passes = []
    for dims in [()] + (mirror_axes(len(size)) if tta else []):
        flipped = [d - 2 for d in dims]
        corners = window_grid(size, window, overlap)
        if flipped:
            # the flipped volume's grid, mapped back; sorted by the streamed axis
            corners = sorted(
                (
                    tuple(
                        s - w - c if i in flipped else c
                        for i, (s, w, c) in enumerate(zip(size, window, cc))
                    )
                    for cc in corners
                ),
                key=lambda c: c[0],
            )
        passes.append(
            (tuple(dims), [corners[i : i + batch] for i in range(0, len(corners), batch)])
        )
    return passes


def _events(passes) -> list[tuple[int, int, int]]:
    """(first row, pass, chunk) in the order the stream runs them."""
    return list(
        heapq.merge(
            *[
                [(chunk[0][0], p, i) for i, chunk in enumerate(chunks)]
                for p, (_, chunks) in enumerate(passes)
            ]
        )
    )


def _steps(passes, n_rows: int, h: int) -> list[tuple[int, int, list[int]]]:
    """Per forward pass (pass, chunk, rows final after each of its windows is added): a row
    is final once no window still to be added starts at or before it, so a batch that ends
    one row of windows and begins the next finalises the first row before adding the rest."""
    flat = [[c for chunk in chunks for c in chunk] for _, chunks in passes]
    ptr = [0] * len(passes)
    out = []
    for _, p, i in _events(passes):
        fins = []
        for _ in passes[p][1][i]:
            ptr[p] += 1
            ready = min(f[ptr[q]][0] if ptr[q] < len(f) else n_rows for q, f in enumerate(flat))
            fins.append(n_rows if ready >= n_rows else (ready // h) * h)
        out.append((p, i, fins))
    return out


def accumulator_rows(
    size: Sequence[int], window: Sequence[int], overlap: float, batch: int, tta: bool, h: int
) -> int:
    """Rows of the accumulator the stream allocates (the most rows live at once)."""
    window = tuple(min(int(w), s) for w, s in zip(window, size))
    passes = _schedule(size, window, overlap, batch, tta)
    base, cap = 0, 0
    for p, i, fins in _steps(passes, size[0], h):
        for c, fin in zip(passes[p][1][i], fins):
            cap = max(cap, c[0] + window[0] - base)
            base = max(base, fin)
    return min(cap, size[0])


@torch.inference_mode()
def _sliding_rows(
    net: nn.Module,
    image: torch.Tensor,
    decision: Decision,
    *,
    batch: int,
    tta: bool,
    h: int,
    dtype: torch.dtype,
    progress: bool,
) -> Iterator[torch.Tensor]:
    """Logit blocks (K, rows, ...) of one model along axis 0, in order."""
    size, device = tuple(image.shape[2:]), image.device
    window = tuple(min(int(w), s) for w, s in zip(decision.window, size))
    overlap = decision.overlap
    passes = _schedule(size, window, overlap, batch, tta)
    steps = _steps(passes, size[0], h)
    sums = axis_sums(size, window, overlap)
    g64 = _gaussian_axes(window, 0.125)
    weight = gaussian_importance(window, device=device).to(dtype)
    cap = accumulator_rows(size, window, overlap, batch, tta, h)
    # float16 keeps the average (magnitude of a logit), not the weighted sum (up to 2^ndim x)
    ratios = tta or dtype != torch.float32
    buf = torch.empty((batch, image.shape[1], *window), dtype=image.dtype, device=device)
    acc: torch.Tensor | None = None
    base, live = 0, 0
    for p, i, fins in _progress(steps, progress, "windows", len(steps)):
        dims, chunks = passes[p]
        chunk = chunks[i]
        x = buf[: len(chunk)]
        for j, c in enumerate(chunk):
            x[j].copy_(image[(0, slice(None), *(slice(a, a + w) for a, w in zip(c, window)))])
        logits = _as_logits(net(x.flip(dims) if dims else x))
        if dims:
            logits = logits.flip(dims)
        if acc is None:
            acc = torch.zeros((logits.shape[1], cap, *size[1:]), dtype=dtype, device=device)
        for j, (c, fin) in enumerate(zip(chunk, fins)):
            region = acc[
                (
                    slice(None),
                    slice(c[0] - base, c[0] - base + window[0]),
                    *(slice(a, a + w) for a, w in zip(c[1:], window[1:])),
                )
            ]
            if ratios:
                # this pass' gaussian / normaliser: the average of the passes in one buffer
                ratio = [
                    g / (s.flip(0) if d + 2 in dims else s)[a : a + len(g)]
                    for d, (g, s, a) in enumerate(zip(g64, sums, c))
                ]
                region.addcmul_(logits[j].to(dtype), _outer(ratio).to(device=device, dtype=dtype))
            else:
                region.addcmul_(
                    logits[j].float() if dtype == torch.float32 else logits[j].to(dtype), weight
                )
            live = max(live, c[0] - base + window[0])
            if fin <= base:
                continue
            for a, b in _blocks(fin - base, h):
                rows = acc[:, a:b].float()
                if ratios:
                    yield (rows / len(passes)).contiguous()
                else:
                    norm = _outer([sums[0][base + a : base + b], *sums[1:]]).float().to(device)
                    yield (rows / norm).contiguous()
            n = fin - base
            keep = max(live - n, 0)
            for s in range(n, live, n):  # disjoint pieces: no overlapping copy
                e = min(s + n, live)
                acc[:, s - n : e - n].copy_(acc[:, s:e])
            acc[:, keep:live].zero_()
            base, live = fin, keep


@torch.inference_mode()
def _slice_rows(
    run: ModelRun,
    volume: torch.Tensor,
    decision: Decision,
    settings: InferenceSettings,
    *,
    slices: int,
    h: int,
    progress: bool,
) -> Iterator[torch.Tensor]:
    """Logit blocks of a 2D network along its slice axis (chunks of ``slices`` slices,
    as :func:`~segkit.inference.engine.infer` runs them)."""
    pending: torch.Tensor | None = None
    n = volume.shape[0]
    done = 0
    for i in range(0, n, slices):
        out = _run(run.net, volume[i : i + slices], decision, settings, progress)
        pending = out if pending is None else torch.cat([pending, out])
        end = i + out.shape[0]
        while pending is not None and (pending.shape[0] >= h or end == n):
            take = min(h, pending.shape[0])
            yield pending[:take].movedim(0, run.slice_axis + 1).contiguous()
            done += take
            pending = pending[take:] if pending.shape[0] > take else None
    assert done == n


def _model_rows(
    run: ModelRun,
    image: torch.Tensor,
    plan: StreamPlan,
    decision: Decision,
    progress: bool,
) -> Iterator[torch.Tensor]:
    settings = InferenceSettings(
        mode=decision.mode,
        overlap=run.settings.overlap,
        window_scale=run.settings.window_scale,
        sw_batch_size=plan.sw_batch_size,
        tta=run.settings.tta,
    )
    if run.is_2d:
        volume = image.movedim(2 + run.slice_axis, 1)[0]
        return _slice_rows(
            run,
            volume,
            decision,
            settings,
            slices=plan.slices,
            h=plan.block_rows,
            progress=progress,
        )
    if decision.mode == "whole":
        with torch.inference_mode():
            logits = _run(run.net, image, decision, settings, progress)[0]
        return _whole_rows(logits, 0, plan.block_rows)
    return _sliding_rows(
        run.net,
        image,
        decision,
        batch=plan.sw_batch_size,
        tta=run.settings.tta,
        h=plan.block_rows,
        dtype=plan.dtype,
        progress=progress,
    )


def decisions_for(
    runs: Sequence[ModelRun], image: torch.Tensor, whole_budget: int | None
) -> list[Decision]:
    """Each model's mode and window for ``image`` (1, C, *S), as :func:`infer` decides."""
    out = []
    for run in runs:
        size = tuple(image.shape[2:])
        patch = list(run.patch_size)
        if run.is_2d:
            if len(patch) == 3:
                del patch[run.slice_axis]
            size = tuple(s for i, s in enumerate(size) if i != run.slice_axis)
        out.append(
            decide(
                run.net, size, patch, run.settings, memory_budget=whole_budget, device=image.device
            )
        )
    return out


def stream_predict(
    runs: Sequence[ModelRun],
    image: torch.Tensor,
    head: OutputHead,
    *,
    classes: int,
    accumulate: str = "auto",
    max_memory_gb: float | None = None,
    slices_per_batch: int = 32,
    consumer: Consumer | None = None,
    progress: bool = False,
    block: int | None = None,
) -> StreamResult:
    """Labels of ``image`` (1, C, *S) averaged over ``runs``, streamed (see the module).

    Args:
        runs: the checkpoints (one: no ensemble).
        image: the preprocessed volume, batch of one.
        head: how outputs become probabilities and labels.
        classes: output channels of the networks.
        accumulate: ``auto`` (float32 unless the budget needs float16), ``float32``,
            ``float16``.
        max_memory_gb: the budget the window batch and accumulation are chosen for; None:
            the settings as given.
        slices_per_batch: slices per call of a 2D network on a volume.
        consumer: receives every finalised block of probabilities.
        progress: progress bar over window batches.
        block: rows finalised at a time (None: :func:`block_rows`; the non-streamed
            :func:`finalise_logits` must use the same for bitwise-equal probabilities).

    Raises:
        ConfigError: a bad ``accumulate``, or a budget too small for one window (naming the
            smallest that works).
    """
    if accumulate not in ACCUMULATE:
        raise ConfigError(f"accumulate: got {accumulate!r}; allowed: {', '.join(ACCUMULATE)}")
    if image.dim() != 5 or image.shape[0] != 1:
        raise ConfigError(
            f"stream_predict: expected one volume (1, C, X, Y, Z), got {tuple(image.shape)}"
        )
    axes = {run.axis() for run in runs}
    if len(axes) != 1:
        raise ConfigError(
            "stream_predict: the ensemble mixes 2D networks sliced across another axis and 3D "
            "networks; they stream along different axes. Fix: stream=false"
        )
    size = tuple(image.shape[2:])
    budget = None if max_memory_gb is None else int(max_memory_gb * 2**30)
    # a whole-volume pass holds every class's logits for the volume: auto takes it only where
    # those fit as well as the pass (the default budget: 4 GiB on the CPU, half the free GPU)
    whole_budget = max(
        0,
        (_default_budget(image.device) if budget is None else budget)
        - 4 * classes * math.prod(size) * (1 + len(runs)),
    )
    decisions = decisions_for(runs, image, whole_budget)
    axis = axes.pop()
    plan = plan_stream(
        runs,
        decisions,
        size=size,
        channels=image.shape[1],
        classes=classes,
        label_bytes=head.label_dtype(classes).itemsize,
        axis=axis,
        block=min(size[axis], block or block_rows(classes, math.prod(size) // size[axis])),
        accumulate=accumulate,
        budget=budget,
        slices=slices_per_batch,
        rows_of=accumulator_rows,
    )
    labels = torch.empty(size, dtype=head.label_dtype(classes))
    sources = [_model_rows(r, image, plan, d, progress) for r, d in zip(runs, decisions)]
    start = 0
    for blocks in zip(*sources, strict=True):
        probs, lab = finalise_block(blocks, head)
        n = lab.shape[axis]
        labels.narrow(axis, start, n).copy_(lab)
        if consumer is not None:
            consumer(axis, start, start + n, probs)
        start += n
        del blocks, probs, lab
    if start != size[axis]:
        raise RuntimeError(f"stream covered {start} of {size[axis]} rows")  # a bug, not input
    return StreamResult(labels=labels, decisions=decisions, plan=plan)
