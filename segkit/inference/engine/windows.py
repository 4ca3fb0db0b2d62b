"""Where the windows go and how they are weighted: the sliding window's geometry, one home.

Per axis, windows of ``w`` voxels cover ``[0, size)``: as many as a step of
``w·(1 − overlap)`` needs, spread evenly so the first starts at 0 and the last ends at
``size`` (:func:`window_starts`). Each window is weighted by a separable Gaussian of σ =
``w·SIGMA_SCALE`` peaking at voxel ``w // 2``, except along an axis with a single window,
where the weight is 1 (one window: nothing to blend, and the weight would cancel in the
normaliser). Placement and weight are nnU-Net's (``compute_steps_for_sliding_window`` with
``tile_step_size = 1 − overlap``, ``compute_gaussian``), so segkit runs nnU-Net's models on
nnU-Net's windows; ``tests/inference/test_windows_nnunet.py`` holds them against nnunetv2.
Every weight is a product of per-axis 1D weights, so the normaliser (the sum of the weights
of every window covering a voxel) is the outer product of per-axis sums (:func:`axis_sums`),
computed in float64.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch

from segkit.defaults import DEFAULT_OVERLAP
from segkit.errors import ConfigError

SIGMA_SCALE = 0.125
"""Gaussian σ as a fraction of the window, per axis (nnU-Net's 1/8)."""


def check_overlap(overlap: float) -> None:
    """Raises ConfigError unless ``0 <= overlap < 1``."""
    if not 0 <= overlap < 1:
        raise ConfigError(
            f"overlap: got {overlap}; expected 0 <= overlap < 1, e.g. overlap={DEFAULT_OVERLAP}"
        )


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start positions covering ``[0, size)`` with windows of ``window`` voxels.

    The number of windows is that of a (fractional) step of ``window·(1 − overlap)``; the
    starts are then spread evenly so the first begins at 0 and the last ends at ``size``
    (nnU-Net's arithmetic, rounding half to even as numpy does).
    """
    if size <= window:
        return [0]
    n = math.ceil((size - window) / (window * (1 - overlap))) + 1
    step = (size - window) / (n - 1)
    return [round(step * i) for i in range(n)]


def window_grid(
    size: Sequence[int], window: Sequence[int], overlap: float
) -> list[tuple[int, ...]]:
    """Corners of all windows tiling ``size`` (last axis fastest)."""
    starts = [window_starts(s, w, overlap) for s, w in zip(size, window)]
    return list(itertools.product(*starts))


@functools.lru_cache(maxsize=64)
def gaussian_1d(window: int) -> torch.Tensor:
    """float64 Gaussian of ``window`` voxels, σ = ``window·SIGMA_SCALE``, peak 1 at voxel
    ``window // 2`` (nnU-Net's centre).

    A floor keeps border weights positive (the normaliser divides by them); at σ = w/8 the
    border weight is e^-8 at least, so the floor only acts on windows of a voxel or two.
    """
    x = torch.arange(window, dtype=torch.float64) - window // 2
    sigma = max(window * SIGMA_SCALE, 1e-3)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.max()).clamp_min(1e-6)


def axis_weights(
    size: Sequence[int], window: Sequence[int], overlap: float
) -> tuple[torch.Tensor, ...]:
    """Per axis, the 1D float64 weight of a window: Gaussian, or ones where the axis has a
    single window."""
    return tuple(
        gaussian_1d(w)
        if len(window_starts(s, w, overlap)) > 1
        else torch.ones(w, dtype=torch.float64)
        for s, w in zip(size, window)
    )


def outer(axes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The outer product of 1D tensors (one per axis)."""
    g = axes[0]
    for a in axes[1:]:
        g = g[..., None] * a
    return g


def importance_map(size: Sequence[int], window: Sequence[int], overlap: float) -> torch.Tensor:
    """The float32 weight of one window (the product of :func:`axis_weights`): what MONAI's
    ``sliding_window_inference`` takes as ``roi_weight_map`` to weight windows alike."""
    return outer(axis_weights(size, window, overlap)).float()


def axis_sums(size: Sequence[int], window: Sequence[int], overlap: float) -> list[torch.Tensor]:
    """Per axis, the float64 sum of the windows' 1D weights at every position: the
    normaliser is their outer product."""
    sums = []
    for s, w, g in zip(size, window, axis_weights(size, window, overlap)):
        acc = torch.zeros(s, dtype=torch.float64)
        for start in window_starts(s, w, overlap):
            acc[start : start + w] += g
        sums.append(acc)
    return sums


def mirror_axes(dims: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of the tensor ``dims`` to flip for mirroring (test-time
    augmentation): ``2^len(dims) − 1`` flips."""
    dims = tuple(dims)
    return [c for r in range(1, len(dims) + 1) for c in itertools.combinations(dims, r)]
