"""Whole-volume and sliding-window prediction of logits for one batch of volumes.

The exact-shape network runs on a whole volume at its native size (no padding to
a multiple). Sliding window tiles any volume with windows of any size, weights
each window with a Gaussian importance map and accumulates on the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

MODES = ("auto", "whole", "sliding")


@functools.lru_cache(maxsize=8)
def _gaussian_cpu(window: tuple[int, ...], sigma_scale: float) -> torch.Tensor:
    axes = []
    for w in window:
        x = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
        sigma = max(w * sigma_scale, 1e-3)
        axes.append(torch.exp(-0.5 * (x / sigma) ** 2))
    g = axes[0]
    for a in axes[1:]:
        g = g[..., None] * a
    g = g / g.max()
    # Zero weights would divide by zero where only window borders reach.
    return g.clamp_min(g[g > 0].min()).float()


def gaussian_importance(
    window: Sequence[int], *, sigma_scale: float = 0.125, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Separable Gaussian centred on the window, max 1 (nnU-Net's sigma: 1/8 of the window)."""
    return _gaussian_cpu(tuple(int(w) for w in window), sigma_scale).to(device)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start positions covering ``[0, size)`` with windows of ``window`` voxels."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    n = math.ceil((size - window) / step) + 1
    if n == 1:
        return [0]
    return [round(i * (size - window) / (n - 1)) for i in range(n)]


def _windows(size: Sequence[int], window: Sequence[int], overlap: float) -> Iterator[tuple]:
    import itertools

    starts = [window_starts(s, w, overlap) for s, w in zip(size, window)]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, c + w) for c, w in zip(corner, window))


@torch.inference_mode()
def sliding_window(
    net: nn.Module, image: torch.Tensor, window: Sequence[int], *, overlap: float = 0.5,
    sw_batch_size: int = 4, gaussian: bool = True, progress: bool = False,
) -> torch.Tensor:
    """Logits of ``net`` over ``image`` (N, C, *S), tiled with overlapping windows.

    Windows larger than the volume are clipped to it (the network accepts any
    size), so no padding is ever needed.
    """
    size = tuple(image.shape[2:])
    window = tuple(min(w, s) for w, s in zip(window, size))
    weight = (gaussian_importance(window, device=image.device) if gaussian
              else torch.ones(window, device=image.device))
    slices = list(_windows(size, window, overlap))
    norm = torch.zeros(size, device=image.device)
    for sl in slices:
        norm[sl] += weight
    out: torch.Tensor | None = None
    batches = [(n, slices[i : i + sw_batch_size]) for n in range(image.shape[0])
               for i in range(0, len(slices), sw_batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="windows", leave=False)
    for n, chunk in batches:
        logits = net(torch.cat([image[n : n + 1, :, *sl] for sl in chunk]))
        if out is None:
            out = torch.zeros((image.shape[0], logits.shape[1], *size), device=image.device)
        for sl, lg in zip(chunk, logits):
            out[n, :, *sl] += lg.float() * weight
    return out / norm


def whole_volume(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Logits of the exact-shape network run once on the whole volume."""
    with torch.inference_mode():
        return net(image).float()


def inference_bytes(net: nn.Module, size: Sequence[int]) -> int:
    """Rough peak activation memory of one no-grad forward at ``size`` (fp32)."""
    plan = net.plan(tuple(size))
    biggest = max(math.prod(r.out_size) * r.out_channels for r in plan.rows)
    return 4 * biggest * 4  # live: current output, the skip, concat input and a spare


def choose_mode(
    net: nn.Module, size: Sequence[int], window: Sequence[int], *, mode: str = "auto",
    memory_budget: int | None = None, device: torch.device | str = "cpu",
) -> str:
    """``whole`` when the volume fits (under ``memory_budget`` bytes), else ``sliding``."""
    if mode not in MODES:
        from segkit.errors import ConfigError

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


def predict_logits(
    net: nn.Module, image: torch.Tensor, *, window: Sequence[int], mode: str = "auto",
    overlap: float = 0.5, sw_batch_size: int = 4, tta: bool = False,
    memory_budget: int | None = None, progress: bool = False,
) -> torch.Tensor:
    """Logits (N, K, *S) for ``image`` (N, C, *S), in ``net``'s eval mode.

    Args:
        window: sliding-window size (the training patch size).
        mode: ``auto`` (whole volume when it fits), ``whole`` or ``sliding``.
        tta: average over all mirrorings of the spatial axes.
    """
    size = tuple(image.shape[2:])
    chosen = choose_mode(net, size, window, mode=mode, memory_budget=memory_budget,
                         device=image.device)

    def run(x: torch.Tensor) -> torch.Tensor:
        if chosen == "whole":
            return whole_volume(net, x)
        return sliding_window(net, x, window, overlap=overlap, sw_batch_size=sw_batch_size,
                              progress=progress)

    logits = run(image)
    if tta:
        import itertools

        ndim = image.dim() - 2
        flips = [c for r in range(1, ndim + 1) for c in itertools.combinations(range(2, ndim + 2), r)]
        for dims in flips:
            logits += run(image.flip(dims)).flip(dims)
        logits /= len(flips) + 1
    return logits
