"""The planner's topology rules, nnU-Net's re-derived for exact shapes.

- target spacing: the median of the cases, except along a very coarse axis with few voxels,
  where the 10th percentile is taken (nnU-Net's anisotropy exception);
- pool an axis while its edge stays >= ``min_edge`` voxels at the bottleneck and its spacing is
  within 2x of the finest; a kernel is 1 along an axis while its spacing is >= 2x the finest.

Pure functions of a fingerprint, a patch and spacings; the search (:mod:`.search`) calls them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from segkit.data.fingerprint import Fingerprint
from segkit.errors import ConfigError


def _fmt(values: Sequence[float], digits: int = 2) -> str:
    return "×".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in values)


def _axes(values: Sequence[int]) -> str:
    return "×".join(str(int(v)) for v in values)


def _stage_range(stages: Sequence[int]) -> str:
    if not stages:
        return ""
    if len(stages) == 1:
        return f"stage {stages[0]}"
    if stages == list(range(stages[0], stages[-1] + 1)):
        return f"stages {stages[0]}–{stages[-1]}"
    return "stages " + ", ".join(map(str, stages))


def pool_strides(
    patch: Sequence[int],
    spacing: Sequence[float],
    *,
    min_edge: int = 4,
    depth: int | None = None,
    ceil_mode: bool = True,
) -> tuple[tuple[int, ...], ...]:
    """Per-stage strides (stage 0 all ones) by nnU-Net's pooling rule, sizes exact.

    An axis is pooled (stride 2) into the next stage while its edge is >= ``2 * min_edge``
    (so it stays >= ``min_edge``) and its spacing is within 2x of the finest pooled
    candidate; a lone axis needs ``3 * min_edge``. ``depth`` forces the number of stages:
    fewer stops early, more keeps pooling the finest axes that still have >= 2 voxels.

    Raises:
        ConfigError: ``depth`` stages cannot be reached at this patch.
    """
    ndim = len(patch)
    size = [int(v) for v in patch]
    sp = [float(v) for v in spacing]
    strides: list[tuple[int, ...]] = [(1,) * ndim]
    while depth is None or len(strides) < depth:
        valid = [a for a in range(ndim) if size[a] >= 2 * min_edge]
        if valid:
            finest = min(sp[a] for a in valid)
            valid = [a for a in valid if sp[a] / finest < 2]
            if len(valid) == 1 and size[valid[0]] < 3 * min_edge:
                valid = []
        if not valid and depth is not None:
            # The user asked for more stages than the rule gives: pool what still halves.
            valid = [a for a in range(ndim) if size[a] >= 2]
            if valid:
                finest = min(sp[a] for a in valid)
                valid = [a for a in valid if sp[a] / finest < 2]
            if not valid:
                raise ConfigError(
                    f"model.depth={depth}: a patch of {_axes(patch)} voxels allows at most "
                    f"{len(strides)} stages (every axis is down to one voxel). Fix: "
                    f"model.depth={len(strides)} or a larger data.patch_size."
                )
        if not valid:
            break
        stride = tuple(2 if a in valid else 1 for a in range(ndim))
        for a in valid:
            size[a] = -(-size[a] // 2) if ceil_mode else size[a] // 2
            sp[a] *= 2
        strides.append(stride)
    return tuple(strides)


def conv_kernels(
    strides: Sequence[Sequence[int]], spacing: Sequence[float], *, kernel: int = 3
) -> tuple[tuple[int, ...], ...]:
    """Per-stage kernels: 1 along an axis while its spacing is >= 2x the finest, else ``kernel``.

    Once an axis gets the full kernel it keeps it; the bottleneck (last stage) uses the full
    kernel on every axis, as nnU-Net does.
    """
    ndim = len(spacing)
    sp = np.asarray(spacing, dtype=float)
    full = [False] * ndim
    out = []
    for i, stride in enumerate(strides):
        sp = sp * np.asarray(stride)
        for a in range(ndim):
            full[a] = full[a] or sp[a] / sp.min() < 2
        last = i == len(strides) - 1
        out.append(tuple(kernel if (full[a] or last) else 1 for a in range(ndim)))
    return tuple(out)


def explain_topology(
    strides: Sequence[Sequence[int]],
    kernels: Sequence[Sequence[int]],
    spacing: Sequence[float],
    axis_names: Sequence[str],
) -> list[str]:
    """One line per axis: pools, and where (and why) kernels are 1 or stages are not pooled."""
    finest = min(spacing)
    lines = []
    for a, name in enumerate(axis_names):
        pools = sum(1 for s in strides if s[a] > 1)
        k1 = [i for i, k in enumerate(kernels) if k[a] == 1]
        unpooled = [i for i in range(1, len(strides)) if strides[i][a] == 1]
        line = f"{name}: spacing {spacing[a]:.2f} mm"
        if spacing[a] / finest >= 2:
            line += f" ≥ 2× the finest {finest:.2f} mm"
        parts = [f"{pools} pool(s)"]
        if k1:
            parts.append(f"kernel 1 at {_stage_range(k1)}")
        if unpooled:
            parts.append(f"stride 1 into {_stage_range(unpooled)}")
        lines.append(line + " → " + ", ".join(parts))
    return lines


# --------------------------------------------------------------------------- spacing


def target_spacing(
    fingerprint: Fingerprint, *, anisotropy_threshold: float = 3.0
) -> tuple[tuple[float, ...], str]:
    """Median spacing, with nnU-Net's anisotropy exception; returns the spacing and why."""
    spacings = np.asarray(fingerprint.spacings, dtype=float)
    shapes = np.asarray(fingerprint.shapes_after_crop, dtype=float)
    target = np.median(spacings, axis=0)
    median_shape = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > anisotropy_threshold * max(target[others])
    aniso_voxels = median_shape[worst] * anisotropy_threshold < min(median_shape[others])
    why = f"median of {fingerprint.num_cases} case(s)"
    if aniso_spacing and aniso_voxels:
        p10 = float(np.percentile(spacings[:, worst], 10))
        value = max(p10, float(max(target[others])) + 1e-5) if p10 < max(target[others]) else p10
        if not math.isclose(value, target[worst]):
            why += (
                f", except axis {worst}: {target[worst]:.2f} mm is > {anisotropy_threshold:g}× the "
                f"others with few voxels, so its 10th percentile {value:.2f} mm limits "
                "interpolation artefacts"
            )
        target[worst] = value
    return tuple(float(round(v, 6)) for v in target), why


def spacing_outliers(fingerprint: Fingerprint, factor: float = 2.0) -> list[str]:
    """Cases whose spacing differs from the median by more than ``factor`` on some axis."""
    med = np.asarray(fingerprint.median_spacing)
    out = []
    for cid, sp in zip(fingerprint.case_ids, fingerprint.spacings):
        ratio = np.asarray(sp) / med
        if np.any(ratio > factor) or np.any(ratio < 1 / factor):
            out.append(f"{cid} ({_fmt(sp)} mm)")
    return out


__all__ = [
    "conv_kernels",
    "explain_topology",
    "pool_strides",
    "spacing_outliers",
    "target_spacing",
]
