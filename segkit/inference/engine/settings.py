"""How a volume is inferred: the settings, and which mode runs (whole volume or sliding).

:func:`decide` picks the **whole volume** (one window the size of the volume; the
exact-shape network takes any size) only where that gives the answer a sliding window
would: the volume is no larger than the training patch on every axis, or every module of
the network is known not to depend on the extent of its input
(:func:`~segkit.inference.engine.extent.extent_dependence`: no instance/group norm, no
global pooling, no user block that leaves ``depends_on_extent`` undeclared; batch norm in
eval mode uses its running statistics) and the volume is the patch plus a multiple of the
total stride on every axis, so its levels have the training patches' grids
(:func:`~segkit.inference.engine.extent.grid_mismatch`). Otherwise a **Gaussian sliding
window** of the training patch size (times ``window_scale``). Instance and group norm
normalise every feature map with the statistics of the whole input, so a network trained on
patches answers differently, and measurably worse, on a whole volume (README, "Inference
modes"). Both modes run through the one loop, :mod:`segkit.inference.engine.sliding`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from segkit.defaults import DEFAULT_OVERLAP, SW_BATCH_SIZE, SW_BATCH_SIZE_2D
from segkit.errors import ConfigError
from segkit.inference.engine.extent import extent_dependence, grid_mismatch
from segkit.inference.engine.windows import check_overlap, window_starts

MODES = ("auto", "whole", "sliding")
# a whole-volume pass on the CPU may take this much memory (on a GPU: half the free memory)
_CPU_WHOLE_BYTES = 4 * 2**30


@dataclass(frozen=True)
class InferenceSettings:
    """How to turn a volume into logits.

    Attributes:
        mode: ``auto`` (whole volume only where it equals the sliding window, see
            :func:`decide`), ``whole`` or ``sliding``.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        window_scale: sliding-window size as a multiple of the training patch (>= 1
            gives the network more context per window; clipped to the volume).
        sw_batch_size: windows per forward call; None: ``SW_BATCH_SIZE`` 3D windows or
            ``SW_BATCH_SIZE_2D`` 2D windows (:mod:`segkit.defaults`).
        tta: average each window over its mirrorings along the spatial axes (nnU-Net's
            test-time mirroring: ``2^ndim`` passes).
        mirror_axes: with ``tta``, the network's spatial axes it may mirror (an nnU-Net
            checkpoint's ``inference_allowed_mirroring_axes``); None: every spatial axis.
    """

    mode: str = "auto"
    overlap: float = DEFAULT_OVERLAP
    window_scale: float = 1.0
    sw_batch_size: int | None = None
    tta: bool = False
    mirror_axes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: got {self.mode!r}; allowed: {', '.join(MODES)}")
        check_overlap(self.overlap)
        if not self.window_scale >= 1.0:
            raise ConfigError(
                f"window_scale: got {self.window_scale}; expected a number >= 1 (the window "
                "is the training patch times this, clipped to the volume)"
            )
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise ConfigError(f"sw_batch_size: got {self.sw_batch_size}; expected an integer >= 1")
        if self.mirror_axes is not None:
            axes = tuple(self.mirror_axes)
            if len(set(axes)) != len(axes) or not all(
                isinstance(a, int) and 0 <= a < 3 for a in axes
            ):
                raise ConfigError(
                    f"mirror_axes: got {list(axes)}; expected distinct spatial axes of the "
                    "network (0, 1, 2), e.g. [0, 1, 2]"
                )
            object.__setattr__(self, "mirror_axes", axes)

    def batch(self, spatial_dims: int) -> int:
        """Windows per forward call for a network of ``spatial_dims``."""
        if self.sw_batch_size is not None:
            return self.sw_batch_size
        return SW_BATCH_SIZE_2D if spatial_dims == 2 else SW_BATCH_SIZE

    def describe(self) -> str:
        text = f"mode={self.mode} overlap={self.overlap:g} window_scale={self.window_scale:g}"
        if not self.tta:
            return text
        if self.mirror_axes is None:
            return text + " tta"
        return text + f" tta (axes {','.join(map(str, self.mirror_axes))})"


@dataclass(frozen=True)
class Decision:
    """What the engine runs for one volume, and why.

    Attributes:
        mode: ``whole`` or ``sliding``.
        size: spatial size of the volume (per slice for a 2D network on a volume).
        window: the window (the whole size in ``whole`` mode).
        overlap: sliding-window overlap (0 for ``whole``).
        windows: forward passes per volume (per slice for 2D), before mirroring.
        reason: one line saying why this mode was chosen.
    """

    mode: str
    size: tuple[int, ...]
    window: tuple[int, ...]
    overlap: float
    windows: int
    reason: str

    @property
    def voxels(self) -> int:
        """Voxels the network processes per volume (the cost that calibration compares)."""
        return self.windows * math.prod(self.window)

    def describe(self) -> str:
        size = "×".join(map(str, self.size))
        if self.mode == "whole":
            return f"whole volume {size} ({self.reason})"
        win = "×".join(map(str, self.window))
        return (
            f"sliding window {win} over {size}, overlap {self.overlap:g}, {self.windows} "
            f"windows ({self.reason})"
        )


def inference_bytes(net: nn.Module, size: Sequence[int]) -> int:
    """Rough peak activation memory of one no-grad forward at ``size`` (fp32)."""
    plan = net.plan(tuple(size))
    biggest = max(math.prod(r.out_size) * r.out_channels for r in plan.rows)
    return 4 * biggest * 4  # live: current output, the skip, concat input and a spare


def default_budget(device: torch.device | str) -> int:
    """Bytes ``auto`` may spend on a whole-volume pass: half the free GPU memory, or 4 GiB
    on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return _CPU_WHOLE_BYTES


def scaled_window(patch: Sequence[int], scale: float) -> tuple[int, ...]:
    """The training patch times ``scale``, per axis (at least the patch)."""
    return tuple(max(int(p), int(round(p * scale))) for p in patch)


def decide(
    net: nn.Module,
    size: Sequence[int],
    patch: Sequence[int],
    settings: InferenceSettings | None = None,
    *,
    memory_budget: int | None = None,
    device: torch.device | str = "cpu",
) -> Decision:
    """Which mode the engine runs for a volume of ``size``, with the reason.

    ``auto`` takes the whole volume only where it gives the sliding window's answer:
    the volume fits in one window, or the network does not depend on its input's
    extent (:func:`extent_dependence`), the volume is the patch plus a multiple of the
    network's total stride on every axis (:func:`grid_mismatch`) and the pass fits
    ``memory_budget`` bytes (:func:`default_budget` when None). Otherwise a sliding
    window of ``patch × window_scale``.
    """
    s = settings or InferenceSettings()
    size = tuple(int(v) for v in size)
    if len(patch) != len(size):
        raise ConfigError(
            f"patch {list(patch)} has {len(patch)} axes but the volume has {len(size)}; "
            "give one window size per axis"
        )
    window = tuple(min(w, n) for w, n in zip(scaled_window(patch, s.window_scale), size))
    windows = math.prod(len(window_starts(n, w, s.overlap)) for n, w in zip(size, window))
    whole = Decision("whole", size, size, 0.0, 1, "")
    sliding = Decision("sliding", size, window, s.overlap, windows, "")
    if s.mode == "whole":
        return replace(whole, reason="mode=whole")
    if s.mode == "sliding":
        return replace(sliding, reason="mode=sliding")
    if all(n <= p for n, p in zip(size, patch)):
        return replace(whole, reason="the volume fits in one training patch")
    why = extent_dependence(net)
    if why is not None:
        return replace(sliding, reason=f"{why}, and the volume is larger than the patch")
    why = grid_mismatch(net, size, patch)
    if why is not None:
        return replace(sliding, reason=why)
    budget = default_budget(device) if memory_budget is None else memory_budget
    if inference_bytes(net, size) <= budget:
        return replace(whole, reason="no module depends on the input's extent")
    return replace(sliding, reason="the whole volume would exceed the memory budget")
