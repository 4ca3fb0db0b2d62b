"""The one sliding-window loop: logits of one network over a volume, finalised tile by tile.

Validation, calibration, ``segkit predict`` (3D, 2D, mirroring, ensembles, regions and
softmax) and cross-validation's out-of-fold predictions all run :func:`model_tiles`; the
whole-volume mode is the same loop with one window the size of the volume.

Memory. The output is cut into *tiles* (:class:`Layout`): the plane across the first
spatial axis is split into columns, and each column is streamed along the first axis in
blocks of ``rows`` rows. A column runs every window that touches it, in order of their
first-axis start, into an accumulator of ``classes × (window + rows − 1) × column``; rows
that no window still to come can reach are divided by their slice of the normaliser and
handed out as a :class:`Tile` at once. So the accumulator spans neither the volume nor a
whole plane: its size is set by the window and the column, never by the volume's extent.
A window that crosses a column boundary is run once for each column it touches (on the
boundaries the layout puts at window starts, only where windows overlap);
:attr:`Layout.windows_run` counts them.

Exactness. Every voxel receives the same windows, weights and float64 normaliser
(:mod:`segkit.inference.engine.windows`) whatever the layout: a column holds the sums of all
windows covering its voxels. Only the order of float32 additions may differ between layouts.

Mirroring (``tta``) is nnU-Net's: each window is also run flipped along every subset of the
spatial axes, the outputs flipped back and averaged before the window is weighted.

A 2D network on a volume runs as windows one slice thick (:class:`SliceNet`): the slice
axis is then just another axis of the loop, with one window per slice.

Shorter than the patch. Along an axis where the volume is shorter than the training patch,
the window spans the axis, and the network's input is that window padded with zeros,
centred, to the patch (:meth:`ModelRun.input_window`); the output is cropped back. Every
training patch of such a case was padded the same way, so the network sees at inference the
input it was trained on; with instance norm, an unpadded input would be normalised with
other statistics. nnU-Net's predictor and MONAI's ``sliding_window_inference`` pad the same.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segkit.defaults import SLICE_AXIS
from segkit.inference.engine.settings import Decision, InferenceSettings, decide
from segkit.inference.engine.windows import (
    axis_sums,
    importance_map,
    mirror_axes,
    outer,
    window_starts,
)


@dataclass(frozen=True)
class ModelRun:
    """One network of a prediction and how it infers.

    Attributes:
        net: the network in eval mode.
        patch_size: its training patch (3 axes for a 3D network; 2 or 3 for a 2D one).
        settings: mode, overlap, window scale, window batch, mirroring.
        slice_axis: for a 2D network on volumes, the volume axis it slices across.
    """

    net: nn.Module
    patch_size: tuple[int, ...]
    settings: InferenceSettings
    slice_axis: int = SLICE_AXIS

    @property
    def is_2d(self) -> bool:
        return getattr(getattr(self.net, "spec", None), "spatial_dims", 3) == 2

    @property
    def batch(self) -> int:
        """Windows per forward call (the settings', or the default for the network)."""
        return self.settings.batch(2 if self.is_2d else 3)

    def decide(
        self, size: Sequence[int], *, memory_budget: int | None, device: torch.device | str
    ) -> Decision:
        """The mode and window for a volume of ``size`` (per slice for a 2D network)."""
        size, patch = tuple(size), list(self.patch_size)
        if self.is_2d and len(size) == 3:
            if len(patch) == 3:
                del patch[self.slice_axis]
            size = tuple(s for i, s in enumerate(size) if i != self.slice_axis)
        return decide(
            self.net, size, patch, self.settings, memory_budget=memory_budget, device=device
        )

    def window(self, decision: Decision, ndim: int) -> tuple[int, ...]:
        """The window in volume coordinates (one slice thick for a 2D network on volumes)."""
        window = list(decision.window)
        if self.is_2d and ndim == 3:
            window.insert(self.slice_axis, 1)
        return tuple(window)

    def input_window(self, decision: Decision) -> tuple[int, ...]:
        """The network's input for one window of ``decision`` (the network's axes): the
        window, grown to the training patch on every axis where it spans a volume shorter
        than the patch (the input is then zero-padded, centred; see the module)."""
        patch = list(self.patch_size)
        if self.is_2d and len(patch) == 3:
            del patch[self.slice_axis]
        return tuple(
            max(w, int(p)) if w == n else w
            for w, p, n in zip(decision.window, patch, decision.size)
        )

    def mirror_dims(self, ndim: int) -> list[tuple[int, ...]]:
        """The tensor dims each mirrored pass flips (none without ``tta``)."""
        if not self.settings.tta:
            return []
        axes = [a for a in range(ndim) if not (self.is_2d and ndim == 3 and a == self.slice_axis)]
        allowed = self.settings.mirror_axes
        if allowed is not None:  # the network's axes: a 2D network's skip the slice axis
            axes = [axes[i] for i in allowed if i < len(axes)]
        return mirror_axes([2 + a for a in axes])

    def network(self, ndim: int) -> nn.Module:
        """The network the loop calls: a 2D network on volumes wrapped in :class:`SliceNet`."""
        if self.is_2d and ndim == 3:
            return SliceNet(self.net, self.slice_axis)
        return self.net


class SliceNet(nn.Module):
    """A 2D network applied to windows one slice thick across ``axis`` of a volume."""

    def __init__(self, net: nn.Module, axis: int) -> None:
        super().__init__()
        self.net, self.dim = net, 2 + axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return as_logits(self.net(x.squeeze(self.dim))).unsqueeze(self.dim)


def as_logits(out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution output (a deep-supervision network in training mode returns a
    list, largest first)."""
    return out[0] if isinstance(out, list | tuple) else out


@dataclass(frozen=True)
class Layout:
    """How a volume is cut into output tiles.

    Attributes:
        size: the volume's spatial size.
        rows: rows per tile along the first axis.
        columns: per axis after the first, the column boundaries (0 first, the size last).
    """

    size: tuple[int, ...]
    rows: int
    columns: tuple[tuple[int, ...], ...]

    def column_ranges(self) -> list[tuple[tuple[int, int], ...]]:
        """Every column as ``(lo, hi)`` per axis after the first, in the loop's order."""
        per_axis = [list(zip(b[:-1], b[1:])) for b in self.columns]
        return list(itertools.product(*per_axis))

    @property
    def column_shape(self) -> tuple[int, ...]:
        """The largest column's extent per axis after the first."""
        return tuple(max(b - a for a, b in zip(c[:-1], c[1:])) for c in self.columns)

    def accumulator_rows(self, window: Sequence[int]) -> int:
        """Rows of a column's accumulator for ``window``."""
        return min(self.size[0], int(window[0]) + self.rows - 1)

    def windows_run(self, window: Sequence[int], overlap: float) -> int:
        """Windows the loop runs (a window crossing a column boundary counts once per
        column it touches)."""
        n = len(window_starts(self.size[0], min(window[0], self.size[0]), overlap))
        for s, w, bounds in zip(self.size[1:], window[1:], self.columns):
            w = min(w, s)
            starts = window_starts(s, w, overlap)
            n *= sum(
                sum(1 for a in starts if a < hi and a + w > lo)
                for lo, hi in zip(bounds[:-1], bounds[1:])
            )
        return n

    def describe(self) -> str:
        cols = math.prod(len(b) - 1 for b in self.columns)
        shape = "×".join(map(str, self.column_shape))
        text = f"tiles of {self.rows} row(s) × {shape}"
        return text + (f" in {cols} columns" if cols > 1 else "")


@dataclass(frozen=True)
class Tile:
    """Finalised logits of one tile.

    Attributes:
        box: the tile's spatial slices in the volume.
        logits: (K, *tile) float32, the weighted mean over the windows covering each voxel.
    """

    box: tuple[slice, ...]
    logits: torch.Tensor


def _forward(net: nn.Module, x: torch.Tensor, flips: Sequence[tuple[int, ...]]) -> torch.Tensor:
    out = as_logits(net(x)).float()
    for dims in flips:
        out += as_logits(net(x.flip(dims))).float().flip(dims)
    if flips:
        out /= len(flips) + 1
    return out


@torch.inference_mode()
def model_tiles(
    run: ModelRun,
    image: torch.Tensor,
    decision: Decision,
    layout: Layout,
    *,
    batch: int | None = None,
    progress: bool = False,
) -> Iterator[Tile]:
    """Tiles of the logits of ``run`` over ``image`` (1, C, *S), in ``layout``'s order.

    Args:
        run: the network and its settings.
        image: one volume, on the device the network runs on.
        decision: the mode and window (:meth:`ModelRun.decide`).
        layout: the output tiles.
        batch: windows per forward call (None: the run's).
        progress: a progress bar over forward calls.
    """
    size = tuple(image.shape[2:])
    ndim = len(size)
    window = tuple(min(w, s) for w, s in zip(run.window(decision, ndim), size))
    full = list(run.input_window(decision))
    if run.is_2d and ndim == 3:
        full.insert(run.slice_axis, 1)
    inner = None  # where a window sits in the network's (zero-padded) input
    if tuple(full) != window:
        lo = [(f - w) // 2 for f, w in zip(full, window)]
        inner = (slice(None), *(slice(a, a + w) for a, w in zip(lo, window)))
    overlap = decision.overlap
    batch = batch or run.batch
    device = image.device
    net = run.network(ndim)
    flips = run.mirror_dims(ndim)
    starts = [window_starts(s, w, overlap) for s, w in zip(size, window)]
    weight = importance_map(size, window, overlap).to(device)
    sums = [s.to(device) for s in axis_sums(size, window, overlap)]
    columns = []
    for col in layout.column_ranges():
        touching = [
            [a for a in st if a < hi and a + w > lo]
            for st, w, (lo, hi) in zip(starts[1:], window[1:], col)
        ]
        columns.append((col, list(itertools.product(starts[0], *touching))))
    calls = sum(math.ceil(len(c) / batch) for _, c in columns)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=calls, desc="windows", leave=False)
    alloc = torch.empty if inner is None else torch.zeros  # the padding stays zero
    buf = alloc((batch, image.shape[1], *full), dtype=image.dtype, device=device)
    try:
        for col, corners in columns:
            yield from _column(
                net, image, corners, col, window, weight, sums, layout, buf, flips, bar, inner
            )
    finally:
        if bar is not None:
            bar.close()


def _column(net, image, corners, col, window, weight, sums, layout, buf, flips, bar, inner):
    """The tiles of one column (see the module docstring); ``inner``: where each window sits
    in the zero-padded network input (None: unpadded)."""
    n0 = image.shape[2]
    lo = [c[0] for c in col]
    hi = [c[1] for c in col]
    rows = layout.rows
    cap = layout.accumulator_rows(window)
    acc: torch.Tensor | None = None
    base, live = 0, 0

    def emit(stop: int) -> Iterator[Tile]:
        for a in range(base, stop, rows):
            b = min(a + rows, stop)
            norm = outer([sums[0][a:b], *(s[x:y] for s, x, y in zip(sums[1:], lo, hi))])
            box = (slice(a, b), *(slice(x, y) for x, y in zip(lo, hi)))
            yield Tile(box, acc[:, a - base : b - base] / norm.float())

    for i in range(0, len(corners), buf.shape[0]):
        chunk = corners[i : i + buf.shape[0]]
        x = buf[: len(chunk)]
        for j, c in enumerate(chunk):
            crop = image[(0, slice(None), *(slice(a, a + w) for a, w in zip(c, window)))]
            (x[j] if inner is None else x[j][inner]).copy_(crop)
        out = _forward(net, x, flips)
        if inner is not None:
            out = out[(slice(None), *inner)]
        if bar is not None:
            bar.update()
        if acc is None:
            acc = out.new_zeros((out.shape[1], cap, *(b - a for a, b in zip(lo, hi))))
        for j, c in enumerate(chunk):
            fin = (c[0] // rows) * rows  # rows before this window's start are final
            if fin > base:
                yield from emit(fin)
                n = fin - base
                for s in range(n, live, n):  # shift in disjoint pieces: no overlapping copy
                    e = min(s + n, live)
                    acc[:, s - n : e - n].copy_(acc[:, s:e])
                acc[:, max(live - n, 0) : live].zero_()
                base, live = fin, max(live - n, 0)
            src = [slice(0, window[0])]
            dst = [slice(c[0] - base, c[0] - base + window[0])]
            for a, w, x0, x1 in zip(c[1:], window[1:], lo, hi):
                src.append(slice(max(x0 - a, 0), min(x1 - a, w)))
                dst.append(slice(max(a, x0) - x0, min(a + w, x1) - x0))
            acc[(slice(None), *dst)].addcmul_(out[(j, slice(None), *src)], weight[tuple(src)])
            live = max(live, c[0] - base + window[0])
        del out  # before the next batch's forward, not after it
    yield from emit(n0)
