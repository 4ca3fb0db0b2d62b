"""The planner's search: spacing, patch, depth, strides, kernels and batch for a budget.

The patch keeps nnU-Net's aspect (1/spacing, clipped to the median case, shrunk along the axis
largest relative to the case) but is *not* rounded to multiples of ``2**pools``: any size the
network accepts, never larger than the median case on any axis, the whole median case when it
fits the budget. The budget is checked with segkit's memory model in bytes
(:func:`~segkit.planner.memory.training_memory`), not a feature-map proxy; batch >= 2 and at
most 5 % of the dataset's voxels.

Everything here is a pure function of the fingerprint and the settings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segkit.data.fingerprint import Fingerprint
from segkit.errors import ConfigError, SegkitError
from segkit.nn import plan_unet
from segkit.plan import Plan
from segkit.planner.memory import GiB, LevelModel, MemoryEstimate, training_memory
from segkit.planner.result import PlannerOptions, PlannerResult
from segkit.planner.rules import (
    _axes,
    _fmt,
    conv_kernels,
    explain_topology,
    pool_strides,
    spacing_outliers,
    target_spacing,
)
from segkit.spec import UNetSpec

log = logging.getLogger("segkit")


def _resize(values: list, n: int) -> list:
    return values[:n] if len(values) >= n else values + [values[-1]] * (n - len(values))


def _family_kernel(family: Mapping[str, Any]) -> int:
    k = family.get("kernel_size", 3)
    return int(k) if isinstance(k, int) and not isinstance(k, bool) else 3


def model_config(
    family: Mapping[str, Any],
    strides: Sequence[Sequence[int]],
    kernels: Sequence[Sequence[int]],
    *,
    in_channels: int,
    out_channels: int,
) -> dict[str, Any]:
    """The family's model config with the planned depth, strides and kernels.

    Any other per-stage list of the family (``channels``, ``convs_per_stage``, blocks per stage
    of a residual encoder, ...) is cut to the new depth or extended by repeating its last item.
    """
    model = {k: v for k, v in dict(family).items() if k not in ("_target_", "_convert_")}
    depth = len(strides)
    old = int(model.get("depth", depth))
    for key, value in list(model.items()):
        if key in ("kernel_size", "strides", "up_kernel_size", "depth"):
            continue
        if isinstance(value, list | tuple) and value:
            if key == "channels" or len(value) == old:
                model[key] = _resize(list(value), depth)
            elif len(value) == old - 1 and depth > 1:
                model[key] = _resize(list(value), depth - 1)
    model.update(
        depth=depth,
        strides=[list(s) for s in strides],
        kernel_size=[list(k) for k in kernels],
        up_kernel_size=None,
        in_channels=in_channels,
        out_channels=out_channels,
    )
    return model


class _Evaluator:
    """Builds and memoises (spec, plan, memory) for candidate patches."""

    def __init__(
        self,
        family: Mapping[str, Any],
        spacing: Sequence[float],
        opts: PlannerOptions,
        *,
        in_channels: int,
        out_channels: int,
        optimizer_states: int,
        depth: int | None,
        strides: Sequence[Sequence[int]] | None,
        kernels: Sequence[Sequence[int]] | None,
    ) -> None:
        self.family, self.spacing, self.opts = family, tuple(spacing), opts
        self.in_channels, self.out_channels = in_channels, out_channels
        self.optimizer_states = optimizer_states
        self.depth, self.strides, self.kernels = depth, strides, kernels
        self.ceil_mode = str(family.get("downsample", "conv")) == "conv"
        self._cache: dict[tuple, tuple[UNetSpec, Plan] | None] = {}
        self._levels: dict[tuple, _Levels | None] = {}

    def topology(self, patch: Sequence[int]) -> tuple[tuple, tuple]:
        strides = self.strides
        if strides is None:
            strides = pool_strides(
                patch,
                self.spacing,
                min_edge=self.opts.min_edge,
                depth=self.depth,
                ceil_mode=self.ceil_mode,
            )
        kernels = self.kernels
        if kernels is None:
            kernels = conv_kernels(strides, self.spacing, kernel=_family_kernel(self.family))
        return tuple(map(tuple, strides)), tuple(map(tuple, kernels))

    def build(self, patch: Sequence[int]) -> tuple[UNetSpec, Plan] | None:
        """Spec and plan at ``patch``, or None when the network cannot take it."""
        patch = tuple(int(v) for v in patch)
        strides, kernels = self.topology(patch)
        key = (patch, strides, kernels)
        if key not in self._cache:
            model = model_config(
                self.family,
                strides,
                kernels,
                in_channels=self.in_channels,
                out_channels=self.out_channels,
            )
            spec = UNetSpec.from_config(model)
            try:
                self._cache[key] = (spec, plan_unet(spec, patch))
            except SegkitError:
                self._cache[key] = None
        return self._cache[key]

    def memory(
        self, patch: Sequence[int], batch: int, *, exact: bool = False
    ) -> MemoryEstimate | None:
        """Memory at ``patch``: scaled from one plan per topology, or ``exact`` from its own."""
        patch = tuple(int(v) for v in patch)
        topo = self.topology(patch)
        if not exact and topo in self._levels:
            levels = self._levels[topo]
            if levels is not None and all(n >= m for n, m in zip(patch, levels.min_size)):
                return levels.model.memory(
                    patch,
                    batch,
                    optimizer_states=self.optimizer_states,
                    precision=self.opts.precision,
                )
        built = self.build(patch)
        if built is None:
            return None
        spec, plan = built
        if topo not in self._levels:
            model = LevelModel.from_plan(spec, plan)
            floor = plan.min_input_size or (1,) * len(patch)
            self._levels[topo] = None if model is None else _Levels(model, floor)
        return training_memory(
            spec,
            plan,
            batch,
            optimizer_states=self.optimizer_states,
            precision=self.opts.precision,
        )

    def memory_as(self, topo: tuple, patch: Sequence[int], batch: int) -> MemoryEstimate | None:
        """Memory of the network of topology ``topo`` (already planned) at ``patch``, or None."""
        levels = self._levels.get(topo)
        if levels is None or any(n < m for n, m in zip(patch, levels.min_size)):
            return None
        return levels.model.memory(
            patch, batch, optimizer_states=self.optimizer_states, precision=self.opts.precision
        )


@dataclass(frozen=True)
class _Levels:
    model: LevelModel
    min_size: tuple[int, ...]


def _fixed_int(key: str, value: Any, *, example: str = "2") -> int:
    """A positive integer given on the command line for a planned key."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = 0
    if number < 1 or isinstance(value, bool) or isinstance(value, float) and number != value:
        raise ConfigError(
            f"{key}: got {value!r}; expected positive integers. Fix: e.g. {key}={example}"
        )
    return number


def _items(value: Any) -> list[Any]:
    """A list value (a scalar where a list is expected is refused by :func:`_fixed_int`)."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]


def plan_experiment(
    fingerprint: Fingerprint,
    family: Mapping[str, Any],
    options: PlannerOptions | None = None,
    *,
    fixed: Mapping[str, Any] | None = None,
    optimizer_states: int = 1,
    family_name: str = "unet",
) -> PlannerResult:
    """Plans spacing, patch, batch and the network's stages for a dataset and a budget.

    Args:
        fingerprint: The dataset's fingerprint.
        family: The model config (``cfg.model``) whose depth, strides and kernels are planned;
            every other key (blocks, norms, channels, ...) is kept.
        options: Planner settings.
        fixed: Values given explicitly (keys of :data:`PLANNED_KEYS`); they win.
        optimizer_states: Buffers per weight of the optimizer.
        family_name: For messages.

    Raises:
        ConfigError: The budget is too small for the smallest plan (says which budget works),
            or a fixed value cannot be honoured.
    """
    opts = options or PlannerOptions()
    fixed = dict(fixed or {})
    decisions: list[str] = []
    warns: list[str] = []
    budget = opts.memory_gb * GiB

    # Spacing and the median case.
    if "data.target_spacing" in fixed:
        try:
            spacing3 = tuple(float(v) for v in _items(fixed["data.target_spacing"]))
        except (TypeError, ValueError):
            spacing3 = ()
        if len(spacing3) != 3 or not all(0 < v < math.inf for v in spacing3):
            raise ConfigError(
                f"data.target_spacing={fixed['data.target_spacing']}: expected 3 positive "
                "numbers (mm). Fix: e.g. 'data.target_spacing=[1.0,1.0,1.0]'"
            )
        decisions.append(f"target spacing {_fmt(spacing3)} mm: given (data.target_spacing)")
    else:
        spacing3, why = target_spacing(fingerprint, anisotropy_threshold=opts.anisotropy_threshold)
        decisions.append(f"target spacing {_fmt(spacing3)} mm: {why}")
    outliers = spacing_outliers(fingerprint)
    if outliers:
        shown = ", ".join(outliers[:10]) + (
            f" and {len(outliers) - 10} more" if len(outliers) > 10 else ""
        )
        warns.append(
            f"{len(outliers)} case(s) have a spacing more than 2× away from the median "
            f"{_fmt(fingerprint.median_spacing)} mm on some axis: {shown}; they are resampled "
            "a lot (check their headers)"
        )
    shapes = np.asarray(fingerprint.resampled_shapes(spacing3), dtype=float)
    median3 = tuple(int(v) for v in np.floor(np.median(shapes, axis=0)))
    dataset_voxels = float(shapes.prod(axis=1).sum())

    ndim = _fixed_int("model.spatial_dims", family.get("spatial_dims", 3), example="3")
    slice_axis = None
    if ndim == 2:
        sp = np.asarray(spacing3)
        slice_axis = int(np.flatnonzero(sp == sp.max())[-1])
        axes = [a for a in range(3) if a != slice_axis]
        decisions.append(
            f"2D: slices across axis {slice_axis} (the coarsest, {spacing3[slice_axis]:.2f} mm); "
            f"patches cover axes {axes[0]} and {axes[1]}"
        )
    elif ndim == 3:
        axes = [0, 1, 2]
    else:
        raise ConfigError(f"model.spatial_dims={ndim}: the planner plans 2D or 3D networks.")
    spacing = tuple(spacing3[a] for a in axes)
    median = tuple(max(1, median3[a]) for a in axes)
    axis_names = [f"axis {a}" for a in axes]
    decisions.append(
        f"median case after resampling {_axes(median3)} voxels "
        f"({fingerprint.num_cases} case(s), {dataset_voxels / 1e6:,.1f} M voxels in all)"
    )

    # Fixed topology pieces.
    depth = strides = kernels = None
    if "model.strides" in fixed:
        if _list_len(fixed["model.strides"], fixed) is None:
            raise ConfigError(
                f"model.strides={fixed['model.strides']} with planner=auto: a scalar stride needs "
                "model.depth too (or give one stride per stage, e.g. model.strides=[1,2,2,2])"
            )
        strides = UNetSpec.from_config(
            {
                "spatial_dims": ndim,
                "depth": _list_len(fixed["model.strides"], fixed),
                "strides": fixed["model.strides"],
            }
        ).strides
    if "model.kernel_size" in fixed:
        kd = _list_len(fixed["model.kernel_size"], fixed)
        if kd is None:
            kd = len(strides) if strides is not None else None
        if kd is not None:
            kernels = UNetSpec.from_config(
                {"spatial_dims": ndim, "depth": kd, "kernel_size": fixed["model.kernel_size"]}
            ).kernel_size
    if "model.depth" in fixed:
        depth = _fixed_int("model.depth", fixed["model.depth"])
    elif strides is not None:
        depth = len(strides)
    elif kernels is not None:
        depth = len(kernels)
    family = dict(family)
    if "model.channels" in fixed:
        family["channels"] = fixed["model.channels"]
    if "model.kernel_size" in fixed and kernels is None:
        family["kernel_size"] = fixed["model.kernel_size"]  # a scalar: the full kernel

    ev = _Evaluator(
        family,
        spacing,
        opts,
        in_channels=fingerprint.num_channels,
        out_channels=fingerprint.num_classes,
        optimizer_states=optimizer_states,
        depth=depth,
        strides=strides,
        kernels=kernels,
    )
    batch = fixed.get("data.batch_size")
    fixed_batch = None if batch is None else _fixed_int("data.batch_size", batch)
    search_batch = fixed_batch or opts.min_batch_size

    def fits(patch: Sequence[int]) -> bool:
        mem = ev.memory(patch, search_batch)
        return mem is not None and mem.total <= budget

    # The patch.
    if "data.patch_size" in fixed:
        given = fixed["data.patch_size"]
        patch = tuple(_fixed_int("data.patch_size", v, example="[96,96,64]") for v in _items(given))
        if len(patch) != ndim:
            raise ConfigError(
                f"data.patch_size={list(patch)} has {len(patch)} axes for a {ndim}D model."
            )
        if ev.build(patch) is None:
            plan_unet(UNetSpec.from_config(_model_of(ev, patch)), patch)  # raises the reason
        decisions.append(f"patch {_axes(patch)}: given (data.patch_size)")
    else:
        patch = _search_patch(ev, fits, median, spacing, opts, ndim, search_batch, budget)
        if patch == median:
            decisions.append(
                f"patch {_axes(patch)}: the whole median case (fits {opts.memory_gb:g} GB at "
                f"batch {search_batch})"
            )
        else:
            need = ev.memory(median, search_batch)
            need_txt = f"needs {need.total_gb:.1f} GB" if need else "is beyond the network"
            decisions.append(
                f"patch {_axes(patch)}: the median case {_axes(median)} {need_txt} at batch "
                f"{search_batch}; the largest patch within {opts.memory_gb:g} GB with nnU-Net's "
                "aspect (1/spacing, shrunk along the axis largest relative to the case), "
                "no rounding to multiples of 2^pools"
            )
    spec, plan = ev.build(patch)

    # Batch.
    if fixed_batch is not None:
        batch = fixed_batch
        decisions.append(f"batch {batch}: given (data.batch_size)")
    else:
        batch = opts.min_batch_size
        while batch < opts.max_batch_size and ev.memory(patch, batch + 1).total <= budget:
            batch += 1
        by_memory = batch
        cap = max(
            opts.min_batch_size,
            int(round(opts.max_dataset_fraction * dataset_voxels / math.prod(patch))),
        )
        batch = max(opts.min_batch_size, min(batch, cap))
        why = f"the largest that fits {opts.memory_gb:g} GB"
        if by_memory > cap:
            why = (
                f"{by_memory} would fit {opts.memory_gb:g} GB, capped so a batch sees at most "
                f"{opts.max_dataset_fraction:.0%} of the dataset's voxels"
            )
        elif by_memory == opts.min_batch_size and ev.memory(patch, batch).total <= budget:
            why = f"nnU-Net's minimum {opts.min_batch_size}; the patch was sized for it"
        decisions.append(f"batch {batch}: {why}")
    memory = ev.memory(patch, batch, exact=True)
    # The scaled model is exact for segkit's blocks; a block whose saved tensors do not scale
    # with its level is caught here and the plan steps down until the exact plan fits.
    for _ in range(1000):
        if memory.total <= budget or "data.patch_size" in fixed and fixed_batch is not None:
            break
        if fixed_batch is None and batch > opts.min_batch_size:
            batch -= 1
        elif "data.patch_size" not in fixed:
            a = max(range(ndim), key=lambda i: patch[i] / median[i])
            if patch[a] <= 1:
                break
            patch = tuple(v - 1 if i == a else v for i, v in enumerate(patch))
            spec, plan = ev.build(patch)
        else:
            break
        memory = ev.memory(patch, batch, exact=True)
    if memory.total > budget:
        warns.append(
            f"the given values need {memory.total_gb:.2f} GB, more than planner.memory_gb="
            f"{opts.memory_gb:g}"
        )

    model = model_config(
        family,
        spec.strides,
        spec.kernel_size,
        in_channels=fingerprint.num_channels,
        out_channels=fingerprint.num_classes,
    )
    decisions.append(
        f"depth {spec.depth}: pool an axis while its edge stays ≥ {opts.min_edge} at the "
        f"bottleneck and its spacing ≤ 2× the finest; pools per axis "
        f"{_axes([sum(1 for s in spec.strides if s[a] > 1) for a in range(ndim)])}"
        + (" (model.depth given)" if "model.depth" in fixed else "")
    )
    decisions += explain_topology(spec.strides, spec.kernel_size, spacing, axis_names)
    decisions.append(
        f"channels {'/'.join(map(str, spec.channels))} (model family {family_name}: "
        f"model.channels, model.max_channels)"
    )
    decisions.append(f"estimated memory {memory.breakdown()}")
    for w in warns:
        log.warning("planner: %s", w)
    return PlannerResult(
        target_spacing=spacing3,
        patch_size=tuple(patch),
        batch_size=batch,
        model=model,
        spec=spec,
        plan=plan,
        memory=memory,
        budget_gb=opts.memory_gb,
        median_shape=median,
        decisions=tuple(decisions),
        warnings=tuple(warns),
        axis_order=fingerprint.axis_order,
        slice_axis=slice_axis,
        explicit=tuple(sorted(fixed)),
    )


def _list_len(value: Any, fixed: Mapping[str, Any]) -> int | None:
    if isinstance(value, list | tuple) or hasattr(value, "__len__") and not isinstance(value, str):
        return len(value)
    return int(fixed["model.depth"]) if "model.depth" in fixed else None


def _model_of(ev: _Evaluator, patch: Sequence[int]) -> dict[str, Any]:
    strides, kernels = ev.topology(patch)
    return model_config(
        ev.family, strides, kernels, in_channels=ev.in_channels, out_channels=ev.out_channels
    )


def _search_patch(
    ev: _Evaluator,
    fits: Any,
    median: tuple[int, ...],
    spacing: tuple[float, ...],
    opts: PlannerOptions,
    ndim: int,
    batch: int,
    budget: float,
) -> tuple[int, ...]:
    if fits(median):
        return median
    # nnU-Net's starting aspect: 1/spacing scaled to 256^3 (2048^2 in 2D), clipped to the case.
    inv = 1 / np.asarray(spacing)
    volume = 256.0**3 if ndim == 3 else 2048.0**2
    start = np.minimum(np.round(inv * (volume / inv.prod()) ** (1 / ndim)), median)
    finest = min(spacing)
    lowest = tuple(
        int(min(m, max(1, math.ceil(opts.min_patch * finest / s)))) for m, s in zip(median, spacing)
    )

    # r = 1 is nnU-Net's start; beyond it every axis grows towards the median case.
    r_max = float(max(m / s for m, s in zip(median, start)))

    def at(r: float) -> tuple[int, ...]:
        return at_scale(start, median, lowest, r)

    def bisect(ok: Any, lo: float, hi: float) -> float:
        for _ in range(40):
            if hi - lo < 1e-4 * max(hi, 1e-9):
                break
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(at(mid)) else (lo, mid)
        return lo

    # Every plan of a new topology costs a network trace: first search with the median case's
    # network (fewer pools at a smaller patch only lowers memory), then refine near the answer.
    ref = ev.topology(median)

    def fits_ref(p: tuple[int, ...]) -> bool:
        mem = ev.memory_as(ref, p, batch)
        return mem is None or mem.total <= budget

    r1 = bisect(fits_ref, 0.0, r_max)
    lo = r1
    while lo > 1e-6 and not fits(at(lo)):
        lo *= 0.9
    hi = min(r_max, max(lo, r1) * 1.1)
    while hi < r_max and fits(at(hi)):
        lo, hi = hi, min(r_max, hi * 1.1)
    lo = bisect(fits, lo, hi) if not fits(at(hi)) else hi
    if not fits(at(lo)) and not fits(lowest):
        mem = ev.memory(lowest, batch)
        need = math.ceil(mem.total / GiB * 100) / 100 if mem else float("nan")
        raise ConfigError(
            f"planner.memory_gb={opts.memory_gb:g} is too small: the smallest plan of this "
            f"model family (patch {_axes(lowest)}, batch {batch}"
            + (f", depth {ev.build(lowest)[0].depth}" if ev.build(lowest) else "")
            + f") needs {need:.2f} GB. Fix: planner.memory_gb={need:.2f} or more, or a smaller "
            "model (model.channels, model.max_channels)."
        )
    patch = list(at_scale(start, median, lowest, lo))
    # Spend what the rounding down left, one axis at a time (smallest relative size first).
    for a in sorted(range(ndim), key=lambda i: patch[i] / median[i]):
        low, high = patch[a], median[a]
        while low < high:
            mid = (low + high + 1) // 2
            trial = patch.copy()
            trial[a] = mid
            if fits(trial):
                low = mid
            else:
                high = mid - 1
        patch[a] = low
    return tuple(patch)


def at_scale(
    start: np.ndarray, median: Sequence[int], lowest: Sequence[int], r: float
) -> tuple[int, ...]:
    """The candidate patch at scale ``r`` of the search path.

    ``r <= 1`` is nnU-Net's path: ``min(start, r * median)`` shrinks the axis largest relative
    to the case first. ``r > 1`` grows the start (clipped by the case) towards the whole case.
    """
    out = []
    for s, m, lo in zip(start, median, lowest):
        size = min(s, r * m) if r <= 1 else min(m, s * r)
        out.append(int(max(lo, min(m, math.floor(size)))))
    return tuple(out)


__all__ = ["at_scale", "model_config", "plan_experiment"]
