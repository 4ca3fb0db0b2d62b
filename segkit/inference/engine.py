"""Whole-volume and sliding-window prediction of logits for one batch of volumes.

The exact-shape network runs on a whole volume at its native size (no padding to
a multiple). Sliding window tiles any volume with windows of any size, weights
each window with a Gaussian importance map and accumulates on the device.

How the sliding window keeps its own overhead small (``benchmarks/bench_sliding_window.py``):

- windows are gathered into one preallocated batch buffer (one copy per window,
  no ``torch.cat`` of temporaries) and accumulated with a fused in-place
  ``addcmul_`` into a preallocated output;
- the normaliser (sum of the overlapping weights) is separable like the
  Gaussian itself, so it is built from per-axis 1D sums instead of one
  full-volume add per window, and applied with one in-place division;
- the importance map is computed once per window size and cached; the network
  runs under ``torch.inference_mode``.

Measured on 2 CPU cores the network itself takes ~90 % of the time at overlap
0.5, so this loop runs at MONAI's speed at equal output; the large saving is
whole-volume mode (no overlap redundancy), which ``auto`` picks when it fits.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from segkit.errors import ConfigError

MODES = ("auto", "whole", "sliding")


@functools.lru_cache(maxsize=16)
def _gaussian_axes(window: tuple[int, ...], sigma_scale: float) -> tuple[torch.Tensor, ...]:
    axes = []
    for w in window:
        x = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
        sigma = max(w * sigma_scale, 1e-3)
        g = torch.exp(-0.5 * (x / sigma) ** 2)
        # Normalised per axis so the product peaks at 1; a floor keeps border
        # weights positive (the normaliser divides by them).
        axes.append((g / g.max()).clamp_min(1e-6))
    return tuple(axes)


@functools.lru_cache(maxsize=16)
def _gaussian_cpu(window: tuple[int, ...], sigma_scale: float) -> torch.Tensor:
    axes = _gaussian_axes(window, sigma_scale)
    return _outer(axes).float()


def _outer(axes: Sequence[torch.Tensor]) -> torch.Tensor:
    g = axes[0]
    for a in axes[1:]:
        g = g[..., None] * a
    return g


def gaussian_importance(
    window: Sequence[int], *, sigma_scale: float = 0.125, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Separable Gaussian centred on the window, max 1 (nnU-Net's sigma: 1/8 of the window)."""
    return _gaussian_cpu(tuple(int(w) for w in window), sigma_scale).to(device)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start positions covering ``[0, size)`` with windows of ``window`` voxels.

    The number of windows is that of a step of ``window·(1 − overlap)``; the
    starts are then spread evenly so the first begins at 0 and the last ends at
    ``size``.
    """
    if size <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    n = math.ceil((size - window) / step) + 1
    return [round(i * (size - window) / (n - 1)) for i in range(n)]


def window_grid(
    size: Sequence[int], window: Sequence[int], overlap: float
) -> list[tuple[int, ...]]:
    """Corners of all windows tiling ``size`` (last axis fastest)."""
    starts = [window_starts(s, w, overlap) for s, w in zip(size, window)]
    return list(itertools.product(*starts))


def _check_overlap(overlap: float) -> None:
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap: got {overlap}; expected 0 <= overlap < 1, e.g. overlap=0.5")


def _norm_map(
    size: Sequence[int],
    window: Sequence[int],
    overlap: float,
    gaussian: bool,
    device: torch.device,
) -> torch.Tensor:
    """Sum of all windows' weights at every voxel, from separable per-axis sums."""
    axes = (
        _gaussian_axes(tuple(window), 0.125)
        if gaussian
        else tuple(torch.ones(w, dtype=torch.float64) for w in window)
    )
    sums = []
    for s, w, g in zip(size, window, axes):
        acc = torch.zeros(s, dtype=torch.float64)
        for start in window_starts(s, w, overlap):
            acc[start : start + w] += g
        sums.append(acc)
    return _outer(sums).float().to(device)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    if x.dim() not in (4, 5):
        return x
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return x.contiguous(memory_format=fmt)


def _progress(items: Iterable, enabled: bool, desc: str, total: int) -> Iterable:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, leave=False)


def _as_logits(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    # A deep-supervision net left in training mode returns a list, largest first.
    return out[0] if isinstance(out, list | tuple) else out


@torch.inference_mode()
def sliding_window(
    net: nn.Module,
    image: torch.Tensor,
    window: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    gaussian: bool = True,
    progress: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits of ``net`` over ``image`` (N, C, *S), tiled with overlapping windows.

    Windows larger than the volume are clipped to it (the network accepts any
    size), so no padding is ever needed. Accumulation happens on ``image``'s
    device in float32.

    Args:
        net: the network (called as is; put it in eval mode first).
        image: the batch of volumes.
        window: window size per spatial axis; any size the network accepts.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        sw_batch_size: windows per forward call.
        gaussian: Gaussian importance weighting (else uniform averaging).
        progress: show a progress bar over window batches.
        channels_last: run the windows in the channels-last memory format (no
            measurable gain on CPU in ``benchmarks/bench_sliding_window.py``; try it
            on GPUs with tensor cores).

    Returns:
        Logits (N, K, *S), float32.
    """
    _check_overlap(overlap)
    if sw_batch_size < 1:
        raise ConfigError(f"sw_batch_size: got {sw_batch_size}; expected an integer >= 1")
    size = tuple(image.shape[2:])
    if len(window) != len(size):
        raise ConfigError(
            f"window {list(window)} has {len(window)} axes but the image has {len(size)} "
            "spatial axes; give one window size per axis"
        )
    window = tuple(min(int(w), s) for w, s in zip(window, size))
    device = image.device
    weight = (
        gaussian_importance(window, device=device)
        if gaussian
        else torch.ones(window, device=device)
    )
    corners = window_grid(size, window, overlap)
    n_img, n_ch = image.shape[:2]
    jobs = [
        (n, corners[i : i + sw_batch_size])
        for n in range(n_img)
        for i in range(0, len(corners), sw_batch_size)
    ]
    buf = torch.empty((sw_batch_size, n_ch, *window), dtype=image.dtype, device=device)
    if channels_last:
        buf = _channels_last(buf)
    out: torch.Tensor | None = None
    for n, chunk in _progress(jobs, progress, "windows", len(jobs)):
        batch = buf[: len(chunk)]
        for j, c in enumerate(chunk):
            batch[j].copy_(image[(n, slice(None), *(slice(a, a + w) for a, w in zip(c, window)))])
        logits = _as_logits(net(batch))
        if out is None:
            out = torch.zeros((n_img, logits.shape[1], *size), dtype=torch.float32, device=device)
        for j, c in enumerate(chunk):
            sl = (n, slice(None), *(slice(a, a + w) for a, w in zip(c, window)))
            out[sl].addcmul_(logits[j].float(), weight)
    assert out is not None  # at least one window always exists
    out /= _norm_map(size, window, overlap, gaussian, device)
    return out


def whole_volume(
    net: nn.Module, image: torch.Tensor, *, channels_last: bool = False
) -> torch.Tensor:
    """Logits of the exact-shape network run once on the whole volume."""
    with torch.inference_mode():
        return _as_logits(net(_channels_last(image) if channels_last else image)).float()


def inference_bytes(net: nn.Module, size: Sequence[int]) -> int:
    """Rough peak activation memory of one no-grad forward at ``size`` (fp32)."""
    plan = net.plan(tuple(size))
    biggest = max(math.prod(r.out_size) * r.out_channels for r in plan.rows)
    return 4 * biggest * 4  # live: current output, the skip, concat input and a spare


def choose_mode(
    net: nn.Module,
    size: Sequence[int],
    window: Sequence[int],
    *,
    mode: str = "auto",
    memory_budget: int | None = None,
    device: torch.device | str = "cpu",
) -> str:
    """``whole`` when the volume fits (under ``memory_budget`` bytes), else ``sliding``.

    The default budget is half the free GPU memory on CUDA and 4 GiB on the CPU.
    """
    if mode not in MODES:
        raise ConfigError(f"mode: got {mode!r}; allowed: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if all(s <= w for s, w in zip(size, window)):
        return "whole"
    if memory_budget is None:
        device = torch.device(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            memory_budget = int(free * 0.5)
        else:
            memory_budget = 4 * 2**30
    return "whole" if inference_bytes(net, size) <= memory_budget else "sliding"


def mirror_axes(ndim: int) -> list[tuple[int, ...]]:
    """Every non-empty set of spatial tensor dims to flip for mirroring TTA."""
    dims = range(2, ndim + 2)
    return [c for r in range(1, ndim + 1) for c in itertools.combinations(dims, r)]


def predict_logits(
    net: nn.Module,
    image: torch.Tensor,
    *,
    window: Sequence[int],
    mode: str = "auto",
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    memory_budget: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Logits (N, K, *S) for ``image`` (N, C, *S); call with ``net`` in eval mode.

    Args:
        window: sliding-window size (the training patch size).
        mode: ``auto`` (whole volume when it fits), ``whole`` or ``sliding``.
        overlap: sliding-window overlap in [0, 1).
        sw_batch_size: windows per forward call.
        tta: average over all mirrorings of the spatial axes (2^ndim passes).
        memory_budget: bytes ``auto`` may spend on a whole-volume pass.
        progress: progress bar over windows.
    """
    size = tuple(image.shape[2:])
    chosen = choose_mode(
        net, size, window, mode=mode, memory_budget=memory_budget, device=image.device
    )

    def run(x: torch.Tensor) -> torch.Tensor:
        if chosen == "whole":
            return whole_volume(net, x)
        return sliding_window(
            net, x, window, overlap=overlap, sw_batch_size=sw_batch_size, progress=progress
        )

    with torch.inference_mode():
        logits = run(image)
        if tta:
            flips = mirror_axes(image.dim() - 2)
            for dims in flips:
                logits += run(image.flip(dims)).flip(dims)
            logits /= len(flips) + 1
    return logits


def predict_volume(
    net: nn.Module,
    image: torch.Tensor,
    *,
    window: Sequence[int],
    slice_axis: int = 2,
    slices_per_batch: int = 32,
    **kwargs,
) -> torch.Tensor:
    """Logits (N, K, *S) for volumes (N, C, *S); see :func:`predict_logits` for ``kwargs``.

    A 2D network (``net.spec.spatial_dims == 2``) on 3D volumes runs slice by slice
    across ``slice_axis`` (the axis its training patches were cut across), in
    batches of ``slices_per_batch`` slices.
    """
    if net.spec.spatial_dims != 2 or image.dim() != 5:
        return predict_logits(net, image, window=window, **kwargs)
    window = list(window)
    if len(window) == 3:
        del window[slice_axis]
    axis = 2 + slice_axis
    out = []
    for volume in image.movedim(axis, 1):  # (S, C, a, b) per volume
        chunks = [
            predict_logits(net, volume[i : i + slices_per_batch], window=window, **kwargs)
            for i in range(0, volume.shape[0], slices_per_batch)
        ]
        out.append(torch.cat(chunks))
    return torch.stack(out).movedim(1, axis)
