"""Self-configuration: spacing, patch, depth, strides, kernels and batch from the dataset.

The rules are nnU-Net's (``ExperimentPlanner``, ``get_pool_and_conv_props``), re-derived for
exact shapes. One job per module:

- :mod:`.memory`: the memory model in bytes that a plan is fitted to;
- :mod:`.rules`: topology rules (target spacing, pooling, kernels) and their explanation;
- :mod:`.result`: the planner's settings and its answer;
- :mod:`.search`: the search for patch, batch and stages within a budget;
- :mod:`.nnunet_plans`: an nnU-Net plans file read as a planner result;
- :mod:`.startup`: the Hydra start-up hook (``planner.auto``) and its answer cache.
"""

from __future__ import annotations

from segkit.planner.memory import (
    GiB,
    LevelModel,
    MemoryEstimate,
    level_sizes,
    optimizer_state_count,
    training_memory,
)
from segkit.planner.result import PLANNED_KEYS, PlannerOptions, PlannerResult
from segkit.planner.rules import (
    conv_kernels,
    explain_topology,
    pool_strides,
    spacing_outliers,
    target_spacing,
)
from segkit.planner.search import at_scale, model_config, plan_experiment
from segkit.planner.startup import apply_planner, explicit_keys, plan_from_config

__all__ = [
    "GiB",
    "PLANNED_KEYS",
    "LevelModel",
    "MemoryEstimate",
    "PlannerOptions",
    "PlannerResult",
    "apply_planner",
    "at_scale",
    "conv_kernels",
    "explain_topology",
    "explicit_keys",
    "level_sizes",
    "model_config",
    "optimizer_state_count",
    "plan_experiment",
    "plan_from_config",
    "pool_strides",
    "spacing_outliers",
    "target_spacing",
    "training_memory",
]
