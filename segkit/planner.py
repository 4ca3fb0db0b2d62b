"""Self-configuration: spacing, patch, depth, strides, kernels and batch from the dataset.

The rules are nnU-Net's (``ExperimentPlanner``, ``get_pool_and_conv_props``), re-derived for
exact shapes:

- target spacing: the median of the cases, except along a very coarse axis with few voxels,
  where the 10th percentile is taken (nnU-Net's anisotropy exception);
- pool an axis while its edge stays >= ``min_edge`` voxels at the bottleneck and its spacing is
  within 2x of the finest; a kernel is 1 along an axis while its spacing is >= 2x the finest;
- the patch keeps nnU-Net's aspect (1/spacing, clipped to the median case, shrunk along the axis
  largest relative to the case) but is *not* rounded to multiples of ``2**pools``: any size the
  network accepts, never larger than the median case on any axis, the whole median case when it
  fits the budget;
- the budget is checked with segkit's memory model in bytes (:func:`training_memory`: parameters,
  gradients, optimizer state, bf16 activations from the plan, loss, the batch itself), not a
  feature-map proxy; batch >= 2 and at most 5 % of the dataset's voxels.

Everything here is a pure function of the fingerprint and the settings except
:func:`apply_planner`, the one hook that start-up code (``train.py``, ``segkit plan``) calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segkit.data.fingerprint import Fingerprint
from segkit.errors import ConfigError, SegkitError
from segkit.plan import Plan, plan_unet
from segkit.spec import UNetSpec

log = logging.getLogger("segkit")

GiB = 2**30
# Keys the planner decides; an explicit command-line override of any of them wins.
PLANNED_KEYS = (
    "data.target_spacing",
    "data.patch_size",
    "data.batch_size",
    "model.depth",
    "model.strides",
    "model.kernel_size",
    "model.channels",
)
# Transient memory of the backward pass (gradients of the largest activations alive at once),
# in units of the largest single activation tensor; measured with the CPU allocator profile of
# real training steps (tests/test_planner_memory.py) and checked on CUDA by the gpu test.
_TRANSIENT_TENSORS = 2.0
# Loss bytes per voxel of a logits head: float32 logits, log-softmax, softmax, one-hot (per
# class) and the resized int64 target plus its float copy.
_LOSS_BYTES_PER_CLASS = 16
_LOSS_BYTES_PER_VOXEL = 16


# --------------------------------------------------------------------------- memory model


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory of one step, in bytes, as PyTorch's allocator would report its peak.

    Attributes:
        batch_size: Samples per step.
        params: Parameter count.
        parameters: fp32 weights.
        gradients: fp32 weight gradients.
        optimizer_state: e.g. SGD momentum (1 buffer per weight) or Adam (2).
        weight_copies: bf16 copies of the weights autocast keeps during a step.
        activations: Tensors autograd saves for backward, for the whole batch.
        loss: The loss' saved tensors (float32 logits, softmax, one-hot, targets).
        batch: The input batch (float32 image, int64 label).
        transient: Gradients alive at once during backward.
    """

    batch_size: int
    params: int
    parameters: int
    gradients: int
    optimizer_state: int
    weight_copies: int
    activations: int
    loss: int
    batch: int
    transient: int

    @property
    def total(self) -> int:
        return (
            self.parameters
            + self.gradients
            + self.optimizer_state
            + self.weight_copies
            + self.activations
            + self.loss
            + self.batch
            + self.transient
        )

    @property
    def total_gb(self) -> float:
        return self.total / GiB

    def breakdown(self) -> str:
        """One line: the total and its parts in GB."""
        fixed = self.parameters + self.gradients + self.optimizer_state + self.weight_copies
        return (
            f"{self.total_gb:.2f} GB = weights, gradients, optimizer state and bf16 copies "
            f"{fixed / GiB:.2f} + activations {self.activations / GiB:.2f} + loss "
            f"{self.loss / GiB:.2f} + batch {self.batch / GiB:.2f} + backward transients "
            f"{self.transient / GiB:.2f} (batch {self.batch_size})"
        )


def optimizer_state_count(optimizer: Mapping[str, Any] | None) -> int:
    """Buffers per weight an optimizer config keeps: SGD with momentum 1, plain SGD 0, else 2."""
    if not optimizer:
        return 1
    target = str(optimizer.get("_target_", "")).rsplit(".", 1)[-1].lower()
    if target == "sgd":
        return 1 if float(optimizer.get("momentum", 0) or 0) > 0 else 0
    return 2


def _estimate(
    *,
    params: int,
    in_channels: int,
    voxels: int,
    activation_bytes_fp32: float,
    heads: Sequence[tuple[int, int]],
    largest: int,
    batch_size: int,
    optimizer_states: int,
    precision: str,
) -> MemoryEstimate:
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"planner.precision={precision!r}; allowed: bf16, fp32")
    act_bytes = 2 if precision == "bf16" else 4
    loss = sum(v * (_LOSS_BYTES_PER_CLASS * k + _LOSS_BYTES_PER_VOXEL) for v, k in heads)
    return MemoryEstimate(
        batch_size=batch_size,
        params=params,
        parameters=4 * params,
        gradients=4 * params,
        optimizer_state=4 * params * optimizer_states,
        weight_copies=2 * params if precision == "bf16" else 0,
        activations=int(batch_size * activation_bytes_fp32 * act_bytes / 4),
        loss=batch_size * loss,
        batch=batch_size * voxels * (4 * in_channels + 8),
        transient=int(batch_size * _TRANSIENT_TENSORS * largest * act_bytes),
    )


def training_memory(
    spec: UNetSpec,
    plan: Plan,
    batch_size: int,
    *,
    optimizer_states: int = 1,
    precision: str = "bf16",
) -> MemoryEstimate:
    """Peak memory of a training step (forward, loss, backward, optimizer step) in bytes.

    Args:
        spec: The network.
        plan: ``plan_unet(spec, patch)``: its ``activation_bytes`` are fp32 saved tensors
            per sample; under bf16 autocast each is stored in 2 bytes.
        batch_size: Samples per step.
        optimizer_states: Buffers per weight (:func:`optimizer_state_count`).
        precision: ``"bf16"`` (mixed precision, the GPU default) or ``"fp32"``.
    """
    return _estimate(
        params=plan.params,
        in_channels=spec.in_channels,
        voxels=math.prod(plan.input_size),
        activation_bytes_fp32=plan.activation_bytes,
        heads=[(math.prod(r.out_size), r.out_channels) for r in plan.rows if "logits" in r.op],
        largest=max((math.prod(r.out_size) * r.out_channels for r in plan.rows), default=0),
        batch_size=batch_size,
        optimizer_states=optimizer_states,
        precision=precision,
    )


def level_sizes(spec: UNetSpec, patch: Sequence[int]) -> list[tuple[int, ...]]:
    """Spatial size of every resolution level of ``spec`` at ``patch`` (shape algebra only)."""
    sizes = [tuple(int(v) for v in patch)]
    for i in range(1, spec.depth):
        downs = spec.downsamples(i)
        sizes.append(tuple(d.out(n) for d, n in zip(downs, sizes[-1])))
    return sizes


@dataclass(frozen=True)
class LevelModel:
    """The memory of one network at any patch, from one plan of it.

    Every saved tensor of a plan lives at one resolution level and is proportional to that
    level's voxel count, so one exact plan gives per-level weights and the memory at another
    patch needs only the level sizes (:func:`level_sizes`), not a new plan.
    """

    spec: UNetSpec
    params: int
    per_level: tuple[float, ...]  # saved fp32 bytes per voxel of each level
    per_input_voxel: float  # saved fp32 bytes per input voxel not attributed to a level
    heads: tuple[tuple[int, int], ...]  # (level, classes)
    tensors: tuple[tuple[int, int], ...]  # (level, channels) of every row's output

    @classmethod
    def from_plan(cls, spec: UNetSpec, plan: Plan) -> LevelModel | None:
        """None when some row does not sit at a level size (then plan every patch exactly)."""
        sizes = level_sizes(spec, plan.input_size)
        index = {}
        for i, size in enumerate(sizes):
            index.setdefault(size, i)
        if len(index) != len(sizes):
            return None  # two levels of equal size: rows cannot be attributed
        per_level = [0.0] * len(sizes)
        heads, tensors = [], []
        attributed = 0
        # Row ``saved`` counts fp32 elements (rows described by formula) or bytes (rows traced
        # with autograd's hooks, which sum to the plan's total).
        unit = 4 if 4 * sum(r.saved for r in plan.rows) <= plan.activation_bytes else 1
        for r in plan.rows:
            level = index.get(tuple(r.out_size))
            if level is None:
                return None
            per_level[level] += unit * r.saved / math.prod(r.out_size)
            attributed += unit * r.saved
            tensors.append((level, r.out_channels))
            if "logits" in r.op:
                heads.append((level, r.out_channels))
        rest = (plan.activation_bytes - attributed) / math.prod(plan.input_size)
        return cls(spec, plan.params, tuple(per_level), rest, tuple(heads), tuple(tensors))

    def memory(
        self, patch: Sequence[int], batch_size: int, *, optimizer_states: int, precision: str
    ) -> MemoryEstimate:
        vox = [math.prod(s) for s in level_sizes(self.spec, patch)]
        return _estimate(
            params=self.params,
            in_channels=self.spec.in_channels,
            voxels=vox[0],
            activation_bytes_fp32=sum(w * v for w, v in zip(self.per_level, vox))
            + self.per_input_voxel * vox[0],
            heads=[(vox[lv], k) for lv, k in self.heads],
            largest=max((vox[lv] * c for lv, c in self.tensors), default=0),
            batch_size=batch_size,
            optimizer_states=optimizer_states,
            precision=precision,
        )


# --------------------------------------------------------------------------- topology


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


# --------------------------------------------------------------------------- the planner


@dataclass(frozen=True)
class PlannerOptions:
    """Settings of the planner (``conf/planner/*.yaml``).

    Attributes:
        memory_gb: Budget in GB (2**30 bytes) that a training step's peak may use.
        min_batch_size: nnU-Net's 2.
        max_dataset_fraction: A batch sees at most this fraction of the dataset's voxels.
        min_edge: Bottleneck edge (voxels) of a pooled axis.
        anisotropy_threshold: Coarse-axis factor for the target-spacing exception.
        min_patch: Smallest patch edge (voxels along the finest axis) the planner considers.
        precision: ``bf16`` or ``fp32`` activations.
        max_batch_size: Upper limit of the batch however much memory is left.
    """

    memory_gb: float = 8.0
    min_batch_size: int = 2
    max_dataset_fraction: float = 0.05
    min_edge: int = 4
    anisotropy_threshold: float = 3.0
    min_patch: int = 16
    precision: str = "bf16"
    max_batch_size: int = 512

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> PlannerOptions:
        cfg = dict(cfg or {})
        kwargs = {}
        for key, default in cls().__dict__.items():
            if key in cfg and cfg[key] is not None:
                kwargs[key] = type(default)(cfg[key])
        opts = cls(**kwargs)
        if opts.memory_gb <= 0:
            raise ConfigError(f"planner.memory_gb={opts.memory_gb}: must be > 0 (GB).")
        if opts.min_batch_size < 1:
            raise ConfigError(f"planner.min_batch_size={opts.min_batch_size}: must be >= 1.")
        return opts


@dataclass(frozen=True)
class PlannerResult:
    """What the planner decided and why.

    Sizes and spacings are in the preprocessed arrays' axis order (``axis_order``); a 2D
    plan's patch covers the two axes other than ``slice_axis``.
    """

    target_spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    model: dict[str, Any]
    spec: UNetSpec
    plan: Plan
    memory: MemoryEstimate
    budget_gb: float
    median_shape: tuple[int, ...]
    decisions: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    axis_order: str = "RAS"
    slice_axis: int | None = None
    explicit: tuple[str, ...] = field(default=())

    @property
    def estimated_memory_gb(self) -> float:
        return self.memory.total_gb

    def fragment(self) -> dict[str, Any]:
        """The config keys the planner sets, as nested dicts (``data`` and ``model``)."""
        m = self.model
        return {
            "data": {
                "target_spacing": list(self.target_spacing),
                "patch_size": list(self.patch_size),
                "batch_size": self.batch_size,
            },
            "model": {
                "depth": m["depth"],
                "strides": m["strides"],
                "kernel_size": m["kernel_size"],
                "channels": list(self.spec.channels),
            },
        }

    def to_json(self) -> dict[str, Any]:
        """Flat keys for ``segkit configure --json``."""
        frag = self.fragment()
        out: dict[str, Any] = {}
        for group, values in frag.items():
            for key, value in values.items():
                out[f"{group}.{key}"] = value
        mem = self.memory
        out.update(
            {
                "estimated_memory_gb": round(mem.total_gb, 3),
                "memory_budget_gb": self.budget_gb,
                "memory_bytes": {
                    k: getattr(mem, k)
                    for k in (
                        "parameters",
                        "gradients",
                        "optimizer_state",
                        "weight_copies",
                        "activations",
                        "loss",
                        "batch",
                        "transient",
                    )
                },
                "params": mem.params,
                "gflops_per_sample": round(2 * self.plan.macs / 1e9, 3),
                "median_shape": list(self.median_shape),
                "patch_fraction_of_median": round(self.coverage, 4),
                "axis_order": self.axis_order,
                "slice_axis": self.slice_axis,
                "decisions": list(self.decisions),
                "warnings": list(self.warnings),
                "explicit_overrides": list(self.explicit),
            }
        )
        return out

    @property
    def coverage(self) -> float:
        """Fraction of the median case one patch covers."""
        return float(
            np.prod([min(p, m) for p, m in zip(self.patch_size, self.median_shape)])
            / np.prod(self.median_shape)
        )


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
        spacing3 = tuple(float(v) for v in fixed["data.target_spacing"])
        if len(spacing3) != 3 or min(spacing3) <= 0:
            raise ConfigError(
                f"data.target_spacing={list(spacing3)}: expected 3 positive numbers (mm)."
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

    ndim = int(family.get("spatial_dims", 3))
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
        depth = int(fixed["model.depth"])
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
    fixed_batch = int(fixed["data.batch_size"]) if "data.batch_size" in fixed else None
    search_batch = fixed_batch or opts.min_batch_size

    def fits(patch: Sequence[int]) -> bool:
        mem = ev.memory(patch, search_batch)
        return mem is not None and mem.total <= budget

    # The patch.
    if "data.patch_size" in fixed:
        patch = tuple(int(v) for v in fixed["data.patch_size"])
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


# --------------------------------------------------------------------------- start-up hook


def explicit_keys(overrides: Sequence[str]) -> set[str]:
    """Keys set by command-line overrides (``key=v``, ``+key=v``, ``++key=v``)."""
    keys = set()
    for item in overrides:
        item = str(item).strip()
        if item.startswith("~") or "=" not in item:
            continue
        keys.add(item.lstrip("+").split("=", 1)[0].split("@", 1)[0])
    return keys


def _task_overrides(cfg: Any) -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    hydra = cfg.get("hydra") if hasattr(cfg, "get") else None
    if hydra is not None and hydra.get("overrides") is not None:
        return list(hydra.overrides.get("task") or [])
    return []


def _choice(cfg: Any, group: str, default: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    try:
        if HydraConfig.initialized():
            return str(HydraConfig.get().runtime.choices.get(group) or default)
        hydra = cfg.get("hydra")
        if hydra is not None:
            return str(hydra.runtime.choices.get(group) or default)
    except Exception:  # noqa: BLE001 - only a label for messages
        pass
    return default


def _fingerprint_for(cfg: Any) -> Fingerprint:
    from pathlib import Path

    from omegaconf import OmegaConf

    from segkit.data.fingerprint import load_dataset_fingerprint, read_fingerprint

    planner = cfg.planner
    if planner.get("fingerprint"):
        return read_fingerprint(
            Path(planner.fingerprint),
            reverse_nnunet_axes=bool(planner.get("reverse_nnunet_axes", True)),
        )
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError(
            "planner: data.root is not set. Fix: data.root=/path/to/dataset, or "
            "planner.fingerprint=/path/to/dataset_fingerprint.json"
        )
    root = Path(cfg.data.root)
    demo = cfg.data.get("make_demo_if_missing")
    if (
        demo
        and not (root / "dataset.json").is_file()
        and (demo is True or Path(str(demo)).resolve() == root.resolve())
    ):
        from segkit.data.demo import make_demo

        make_demo(root)
    cache_dir = cfg.data.get("cache_dir")
    return load_dataset_fingerprint(
        root,
        cache_dir=Path(cache_dir) if cache_dir else None,
        num_workers=int(cfg.data.get("num_workers", 1) or 1),
    )


def plan_from_config(cfg: Any, explicit: set[str] | Sequence[str] = ()) -> PlannerResult:
    """Plans for a composed config: its dataset (or ``planner.fingerprint``), model family,
    optimizer and ``planner.*`` settings; ``explicit`` keys keep their configured values.

    ``planner.plans`` imports an nnU-Net plans file instead (:func:`result_from_plans`).
    """
    from omegaconf import OmegaConf

    explicit = set(explicit)
    if cfg.planner.get("plans"):
        return result_from_plans(cfg, explicit)
    opts = PlannerOptions.from_config(OmegaConf.to_container(cfg.planner, resolve=True))
    family = OmegaConf.to_container(cfg.model, resolve=True)
    fixed = {}
    for key in PLANNED_KEYS:
        if key in explicit:
            group, name = key.split(".")
            value = OmegaConf.select(cfg, key)
            fixed[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    optim = cfg.get("optim")
    states = optimizer_state_count(
        OmegaConf.to_container(optim.optimizer, resolve=True) if optim is not None else None
    )
    return plan_experiment(
        _fingerprint_for(cfg),
        family,
        opts,
        fixed=fixed,
        optimizer_states=states,
        family_name=_choice(cfg, "model", "unet"),
    )


def result_from_plans(cfg: Any, explicit: set[str] | Sequence[str] = ()) -> PlannerResult:
    """An nnU-Net plan (``planner.plans``, ``planner.configuration``) as a planner result."""
    import json
    from pathlib import Path

    from omegaconf import OmegaConf

    from segkit.config import conf_dir
    from segkit.nnunet_plans import import_plans

    planner = cfg.planner
    path = Path(planner.plans)
    resenc = conf_dir() / "model" / "resenc.yaml"
    resenc_family = None
    if resenc.is_file():
        from segkit.config import compose

        resenc_family = OmegaConf.to_container(compose(["model=resenc"]).model, resolve=True)
    imported = import_plans(
        path,
        str(planner.get("configuration") or "3d_fullres"),
        reverse_axes=bool(planner.get("reverse_nnunet_axes", True)),
        resenc_family=resenc_family,
    )
    in_ch, out_ch = cfg.model.get("in_channels"), cfg.model.get("out_channels")
    beside = path.parent / "dataset.json"
    if beside.is_file():
        meta = json.loads(beside.read_text())
        names = meta.get("channel_names") or meta.get("modality") or {}
        in_ch = in_ch or (len(names) or None)
        out_ch = out_ch or (len(meta.get("labels") or {}) or None)
    model = dict(imported["model"], in_channels=int(in_ch or 1), out_channels=int(out_ch or 2))
    spec = UNetSpec.from_config(model)
    data = imported["data"]
    patch = tuple(data["patch_size"])
    plan = plan_unet(spec, patch)
    opts = PlannerOptions.from_config(OmegaConf.to_container(planner, resolve=True))
    optim = cfg.get("optim")
    states = optimizer_state_count(
        OmegaConf.to_container(optim.optimizer, resolve=True) if optim is not None else None
    )
    memory = training_memory(
        spec, plan, data["batch_size"], optimizer_states=states, precision=opts.precision
    )
    ndim = spec.spatial_dims
    decisions = [
        f"imported {path} (configuration {planner.get('configuration')}, "
        f"{imported['network_class']}, {spec.depth} stages, {plan.params:,} parameters)",
        f"axes: nnU-Net's transposed order mapped back "
        f"({'reversed to the voxel axes' if planner.get('reverse_nnunet_axes', True) else 'kept'})",
        f"target spacing {_fmt(data['target_spacing'])} mm, patch {_axes(patch)}, "
        f"batch {data['batch_size']}: as planned by nnU-Net",
    ]
    if not beside.is_file():
        decisions.append(
            f"no dataset.json beside the plans: assuming {spec.in_channels} input channel(s) and "
            f"{spec.out_channels} classes (set model.in_channels / model.out_channels)"
        )
    axes = list(range(3)) if ndim == 3 else [a for a in range(3) if a != imported["slice_axis"]]
    spacing = [data["target_spacing"][a] for a in axes]
    decisions += explain_topology(
        spec.strides, spec.kernel_size, spacing, [f"axis {a}" for a in axes]
    )
    decisions.append(f"estimated memory {memory.breakdown()}")
    median = tuple(imported["median_shape"]) or patch
    return PlannerResult(
        target_spacing=tuple(float(v) for v in data["target_spacing"]),
        patch_size=patch,
        batch_size=int(data["batch_size"]),
        model=model,
        spec=spec,
        plan=plan,
        memory=memory,
        budget_gb=opts.memory_gb,
        median_shape=median,
        decisions=tuple(decisions),
        axis_order="nnU-Net, reversed" if planner.get("reverse_nnunet_axes", True) else "nnU-Net",
        slice_axis=imported["slice_axis"],
        explicit=tuple(sorted(set(explicit) & set(PLANNED_KEYS))),
    )


def apply_planner(cfg: Any, overrides: Sequence[str] | None = None, *, record: bool = True) -> Any:
    """With ``planner.auto``, plans and writes the planned values into ``cfg`` (in place).

    Explicit command-line overrides of :data:`PLANNED_KEYS` win: ``overrides`` is the list of
    overrides (default: Hydra's task overrides of this run). With ``record``, the decisions
    and resolved values go to ``<paths.output_dir>/planner.json`` and ``planner.txt``.

    Returns:
        ``cfg`` (unchanged when the planner is off).
    """
    from omegaconf import OmegaConf, open_dict

    planner = cfg.get("planner") if hasattr(cfg, "get") else None
    if not planner or not planner.get("auto"):
        return cfg
    explicit = explicit_keys(_task_overrides(cfg) if overrides is None else overrides)
    cache = _answer_path(cfg, explicit)
    answer = _read_answer(cache)
    if answer is None:
        result = plan_from_config(cfg, explicit)
        answer = dict(result.to_json(), model=result.model)
        cache = cache or _answer_path(cfg, explicit)  # the fingerprint exists now
        if cache is not None:
            from segkit.data.io import save_json_atomic

            cache.parent.mkdir(parents=True, exist_ok=True)
            save_json_atomic(cache, answer)
    with open_dict(cfg):
        for key in ("target_spacing", "patch_size", "batch_size"):
            if f"data.{key}" not in explicit:
                cfg.data[key] = answer[f"data.{key}"]
        for key, value in answer["model"].items():
            if key in ("in_channels", "out_channels") or f"model.{key}" in explicit:
                continue
            cfg.model[key] = value
    for line in answer["decisions"]:
        log.info("planner: %s", line)
    for line in answer["warnings"]:
        log.warning("planner: %s", line)
    if record and cfg.get("paths") is not None and OmegaConf.select(cfg, "paths.output_dir"):
        from pathlib import Path

        from segkit.data.io import save_json_atomic

        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_json_atomic(out / "planner.json", {k: v for k, v in answer.items() if k != "model"})
        (out / "planner.txt").write_text("\n".join(answer["decisions"]) + "\n")
    return cfg


def _answer_path(cfg: Any, explicit: set[str]) -> Any:
    """Where the planner's answer for this config is cached: beside the dataset's fingerprint,
    keyed by the fingerprint, the model family, the planner and optimizer settings, the
    explicit values and segkit's own source (so a changed rule or block re-plans)."""
    import hashlib
    import json
    from pathlib import Path

    from omegaconf import OmegaConf

    from segkit.data.fingerprint import fingerprint_path
    from segkit.data.layouts import read_dataset

    planner = cfg.planner
    if planner.get("fingerprint") or planner.get("plans") or OmegaConf.is_missing(cfg.data, "root"):
        return None
    root = Path(cfg.data.root)
    if not (root / "dataset.json").is_file():
        return None
    cache_dir = cfg.data.get("cache_dir")
    fp_file = fingerprint_path(read_dataset(root), Path(cache_dir) if cache_dir else None)
    if not fp_file.is_file():
        return None
    package = Path(__file__).parent
    source = hashlib.sha256()
    for f in sorted([*package.glob("*.py"), *package.glob("nn/*.py")]):
        source.update(f.read_bytes())
    key = {
        "fingerprint": fp_file.name,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "planner": OmegaConf.to_container(planner, resolve=True),
        "optim": OmegaConf.to_container(cfg.optim, resolve=True) if cfg.get("optim") else None,
        "explicit": {k: OmegaConf.select(cfg, k) for k in sorted(explicit & set(PLANNED_KEYS))},
        "source": source.hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return fp_file.parent / "plans" / f"planner-{digest[:16]}.json"


def _read_answer(path: Any) -> dict[str, Any] | None:
    import json

    if path is None or not path.is_file():
        return None
    try:
        answer = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return answer if "model" in answer and "decisions" in answer else None


__all__ = [
    "MemoryEstimate",
    "PLANNED_KEYS",
    "PlannerOptions",
    "PlannerResult",
    "apply_planner",
    "conv_kernels",
    "explicit_keys",
    "plan_experiment",
    "plan_from_config",
    "pool_strides",
    "target_spacing",
    "training_memory",
]
