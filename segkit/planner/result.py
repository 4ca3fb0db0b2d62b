"""What the planner is asked (:class:`PlannerOptions`) and what it answers (:class:`PlannerResult`).

Shared by the search (:mod:`.search`), the start-up hook (:mod:`.startup`) and the nnU-Net
plans import (:mod:`.nnunet_plans`), so none of them needs another's internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segkit.errors import ConfigError
from segkit.plan import Plan
from segkit.planner.memory import MemoryEstimate
from segkit.spec import UNetSpec

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
                try:
                    kwargs[key] = type(default)(cfg[key])
                except (TypeError, ValueError, OverflowError):
                    raise ConfigError(
                        f"planner.{key}={cfg[key]!r}: expected a {type(default).__name__}. "
                        f"Fix: planner.{key}={default}"
                    ) from None
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


__all__ = ["PLANNED_KEYS", "PlannerOptions", "PlannerResult"]
