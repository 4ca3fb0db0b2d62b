"""One inference path for validation and prediction: which mode, and the logits.

:func:`infer` is what validation during training *and* ``segkit predict`` call, so a
validation Dice and a prediction made with the same checkpoint and settings are the
same numbers. It first :func:`decide`\\ s how to run:

- **whole volume**, once, at the volume's native size (the exact-shape network takes any
  size), only where that gives the answer a sliding window would: the volume is no
  larger than the training patch on every axis, or every module of the network is known
  not to depend on the extent of its input (:func:`~segkit.inference.extent.extent_dependence`:
  no instance/group norm, no global pooling, no user block that leaves
  ``depends_on_extent`` undeclared; batch norm in eval mode uses its running statistics)
  and the volume is the patch plus a multiple of the total stride on every axis, so its
  levels have the training patches' grids (:func:`~segkit.inference.extent.grid_mismatch`);
  whole then differs from sliding only through the windows' borders
  (``benchmarks/bench_bn_whole.py``);
- otherwise a **Gaussian sliding window** of the training patch size (times
  ``window_scale``). Instance and group norm normalise every feature map with the
  statistics of the whole input, so a network trained on patches answers differently,
  and measurably worse, on a whole volume (README, "Inference modes").

How the sliding window keeps its own overhead small (``benchmarks/bench_sliding_window.py``):
windows are gathered into one preallocated batch buffer and accumulated with a fused
in-place ``addcmul_`` into a preallocated output; the normaliser (sum of the overlapping
weights) is separable like the Gaussian itself, so it is built from per-axis 1D sums; the
importance map is cached per window size; the network runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from segkit.defaults import DEFAULT_OVERLAP
from segkit.errors import ConfigError
from segkit.inference.extent import extent_dependence, grid_mismatch

MODES = ("auto", "whole", "sliding")


@dataclass(frozen=True)
class InferenceSettings:
    """How to turn a volume into logits.

    Attributes:
        mode: ``auto`` (whole volume only where it equals the sliding window, see
            :func:`decide`), ``whole`` or ``sliding``.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        window_scale: sliding-window size as a multiple of the training patch (>= 1
            gives the network more context per window; clipped to the volume).
        sw_batch_size: windows per forward call.
        tta: average over all mirrorings of the spatial axes (2^ndim passes).
    """

    mode: str = "auto"
    overlap: float = DEFAULT_OVERLAP
    window_scale: float = 1.0
    sw_batch_size: int = 4
    tta: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: got {self.mode!r}; allowed: {', '.join(MODES)}")
        _check_overlap(self.overlap)
        if not self.window_scale >= 1.0:
            raise ConfigError(
                f"window_scale: got {self.window_scale}; expected a number >= 1 (the window "
                "is the training patch times this, clipped to the volume)"
            )
        if self.sw_batch_size < 1:
            raise ConfigError(f"sw_batch_size: got {self.sw_batch_size}; expected an integer >= 1")

    def describe(self) -> str:
        text = f"mode={self.mode} overlap={self.overlap:g} window_scale={self.window_scale:g}"
        return text + (" tta" if self.tta else "")


@dataclass(frozen=True)
class Decision:
    """What :func:`infer` ran for one volume, and why.

    Attributes:
        mode: ``whole`` or ``sliding``.
        size: spatial size of the volume (per slice for a 2D network on a volume).
        window: the window (the whole size in ``whole`` mode).
        overlap: sliding-window overlap (0 for ``whole``).
        windows: forward passes per volume, before TTA.
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


# ------------------------------------------------------------------- sliding window


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
        raise ConfigError(
            f"overlap: got {overlap}; expected 0 <= overlap < 1, e.g. overlap={DEFAULT_OVERLAP}"
        )


def axis_sums(
    size: Sequence[int], window: Sequence[int], overlap: float, gaussian: bool = True
) -> list[torch.Tensor]:
    """Per axis, the float64 sum of the windows' 1D weights at every position: the
    normaliser is their outer product (the streamed path slices these same sums)."""
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
    return sums


def _norm_map(
    size: Sequence[int],
    window: Sequence[int],
    overlap: float,
    gaussian: bool,
    device: torch.device,
) -> torch.Tensor:
    """Sum of all windows' weights at every voxel, from separable per-axis sums."""
    return _outer(axis_sums(size, window, overlap, gaussian)).float().to(device)


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
    overlap: float = DEFAULT_OVERLAP,
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
            measurable gain on CPU in ``benchmarks/bench_sliding_window.py``).

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


def _default_budget(device: torch.device | str) -> int:
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 4 * 2**30


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
    """Which mode :func:`infer` runs for a volume of ``size``, with the reason.

    ``auto`` takes the whole volume only where it gives the sliding window's answer:
    the volume fits in one window, or the network does not depend on its input's
    extent (:func:`extent_dependence`), the volume is the patch plus a multiple of the
    network's total stride on every axis (:func:`grid_mismatch`) and the pass fits
    ``memory_budget`` bytes (half the free GPU memory on CUDA, 4 GiB on the CPU).
    Otherwise a sliding window of ``patch × window_scale``.
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
    budget = _default_budget(device) if memory_budget is None else memory_budget
    if inference_bytes(net, size) <= budget:
        return replace(whole, reason="no module depends on the input's extent")
    return replace(sliding, reason="the whole volume would exceed the memory budget")


def mirror_axes(ndim: int) -> list[tuple[int, ...]]:
    """Every non-empty set of spatial tensor dims to flip for mirroring TTA."""
    dims = range(2, ndim + 2)
    return [c for r in range(1, ndim + 1) for c in itertools.combinations(dims, r)]


def _run(
    net: nn.Module,
    image: torch.Tensor,
    decision: Decision,
    settings: InferenceSettings,
    progress: bool,
) -> torch.Tensor:
    def once(x: torch.Tensor) -> torch.Tensor:
        if decision.mode == "whole":
            return whole_volume(net, x)
        return sliding_window(
            net,
            x,
            decision.window,
            overlap=decision.overlap,
            sw_batch_size=settings.sw_batch_size,
            progress=progress,
        )

    with torch.inference_mode():
        logits = once(image)
        if settings.tta:
            flips = mirror_axes(image.dim() - 2)
            for dims in flips:
                logits += once(image.flip(dims)).flip(dims)
            logits /= len(flips) + 1
    return logits


def infer(
    net: nn.Module,
    image: torch.Tensor,
    *,
    patch_size: Sequence[int],
    settings: InferenceSettings | None = None,
    slice_axis: int = 2,
    slices_per_batch: int = 32,
    memory_budget: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, Decision]:
    """Logits (N, K, *S) of volumes (N, C, *S), and what was run: the one inference path.

    Validation during training and ``segkit predict`` both call this. A 2D network
    (``net.spec.spatial_dims == 2``) on 3D volumes runs slice by slice across
    ``slice_axis`` (the axis its training patches were cut across), ``slices_per_batch``
    slices at a time, each slice decided like a 2D volume. Call with ``net`` in eval mode.

    Args:
        net: the network.
        image: the volumes.
        patch_size: the training patch (the sliding window's base size).
        settings: mode, overlap, window scale, batch of windows, TTA.
        slice_axis: for 2D networks on volumes, the sliced volume axis.
        slices_per_batch: slices per call for 2D networks on volumes.
        memory_budget: bytes ``auto`` may spend on a whole-volume pass.
        progress: progress bar over windows.
    """
    settings = settings or InferenceSettings()
    spatial = getattr(getattr(net, "spec", None), "spatial_dims", image.dim() - 2)
    if spatial == 2 and image.dim() == 5:
        patch = list(patch_size)
        if len(patch) == 3:
            del patch[slice_axis]
        axis = 2 + slice_axis
        out = []
        decision = None
        for volume in image.movedim(axis, 1):  # (S, C, a, b) per volume
            decision = decide(
                net,
                volume.shape[2:],
                patch,
                settings,
                memory_budget=memory_budget,
                device=image.device,
            )
            chunks = [
                _run(net, volume[i : i + slices_per_batch], decision, settings, progress)
                for i in range(0, volume.shape[0], slices_per_batch)
            ]
            out.append(torch.cat(chunks))
        return torch.stack(out).movedim(1, axis), decision
    decision = decide(
        net,
        image.shape[2:],
        patch_size,
        settings,
        memory_budget=memory_budget,
        device=image.device,
    )
    return _run(net, image, decision, settings, progress), decision


def predict_logits(
    net: nn.Module,
    image: torch.Tensor,
    *,
    window: Sequence[int],
    mode: str = "auto",
    overlap: float = DEFAULT_OVERLAP,
    sw_batch_size: int = 4,
    tta: bool = False,
    memory_budget: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Logits (N, K, *S) for ``image`` (N, C, *S): :func:`infer` with keyword settings.

    Args:
        window: the training patch size (the sliding window).
        mode: ``auto``, ``whole`` or ``sliding`` (see :func:`decide`).
        overlap: sliding-window overlap in [0, 1).
        sw_batch_size: windows per forward call.
        tta: average over all mirrorings of the spatial axes (2^ndim passes).
        memory_budget: bytes ``auto`` may spend on a whole-volume pass.
        progress: progress bar over windows.
    """
    settings = InferenceSettings(mode=mode, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta)
    logits, _ = infer(
        net,
        image,
        patch_size=window,
        settings=settings,
        memory_budget=memory_budget,
        progress=progress,
    )
    return logits
