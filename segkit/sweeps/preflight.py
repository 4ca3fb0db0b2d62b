"""Pre-flight: what a configuration would build, and whether it may be launched at all.

``plan_one`` is what ``segkit plan`` prints; ``preflight`` adds the planner's memory model
(``planner.memory_gb``), so a search never launches a combination that cannot be built for
its patch or that would need more memory than the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from segkit.errors import SegkitError


def plan_one(overrides: Sequence[str], *, cfg: Any = None) -> tuple[Any, Any]:
    """``(spec, plan)`` of the network ``python train.py <overrides>`` would build.

    Without a readable dataset the plan still shows, with a note on the channels assumed.

    Raises:
        ConfigError: The overrides do not compose, or the model config is invalid.
        ShapeError: The patch size is infeasible for the network.
    """
    from pathlib import Path

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from segkit.config import check_data_choice, compose, plan_network
    from segkit.data.layouts import read_dataset_info
    from segkit.planner import apply_planner

    if cfg is None:
        cfg = compose(overrides, hydra_config=True)
    cfg = apply_planner(cfg, overrides, record=False)
    check_data_choice(cfg)
    problem = None
    try:
        info = read_dataset_info(Path(cfg.data.root))
        counts = (info.num_channels, info.num_outputs)  # outputs: one per region, if regions
    except (SegkitError, OmegaConfBaseException, OSError) as err:
        info, counts = None, None  # no (readable) dataset yet: the plan still shows, with a note
        problem = err if isinstance(err, SegkitError) else None
    spec, plan = plan_network(
        cfg,
        num_channels=counts[0] if counts else None,
        num_classes=counts[1] if counts else None,
        heading="segkit plan: ",
    )
    if counts is None and (cfg.model.in_channels is None or cfg.model.out_channels is None):
        if OmegaConf.is_missing(cfg.data, "root"):
            where = "data.root is not set"
        elif problem is not None and (Path(cfg.data.root) / "dataset.json").is_file():
            where = f"the dataset at data.root={cfg.data.root} cannot be read: {problem}"
        else:
            where = f"no dataset.json at data.root={cfg.data.root}"
        note = (
            f"({where}: assuming {spec.in_channels} input channel(s) and "
            f"{spec.out_channels} classes)\n"
        )
        plan = replace(plan, title=plan.title + note)
    if info is not None and info.describe_outputs():
        plan = replace(plan, title=f"{plan.title}{info.describe_outputs()}\n")
    return spec, plan


@dataclass(frozen=True)
class Preflight:
    """One configuration checked before launch.

    Attributes:
        feasible: It builds for its patch and fits ``planner.memory_gb``.
        reason: Why not (empty when feasible).
        params: Parameter count (0 when it does not build).
        gflops: FLOPs of one patch's forward pass, in GFLOPs.
        memory_gb: The memory model's peak of a training step, in GB.
        budget_gb: ``planner.memory_gb``.
        batch_size: The batch the memory is estimated for.
    """

    feasible: bool
    reason: str = ""
    params: int = 0
    gflops: float = 0.0
    memory_gb: float = 0.0
    budget_gb: float = 0.0
    batch_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def preflight(overrides: Sequence[str]) -> Preflight:
    """Plan ``overrides`` and estimate a training step's memory against ``planner.memory_gb``.

    A composition error (a typo in a key) is not a property of one combination, so it raises.

    Raises:
        ConfigError: The overrides do not compose.
    """
    from omegaconf import OmegaConf

    from segkit.config import compose
    from segkit.errors import ConfigError
    from segkit.planner import optimizer_state_count, training_memory
    from segkit.planner.result import PlannerOptions

    cfg = compose(overrides, hydra_config=True)
    try:
        spec, plan = plan_one(overrides, cfg=cfg)
        opts = PlannerOptions.from_config(OmegaConf.to_container(cfg.planner, resolve=True))
    except ConfigError as exc:
        if str(exc).startswith("config:"):
            raise
        return Preflight(feasible=False, reason=str(exc))
    except SegkitError as exc:
        return Preflight(feasible=False, reason=str(exc))
    batch = int(cfg.data.batch_size)
    states = optimizer_state_count(OmegaConf.to_container(cfg.optim.optimizer, resolve=True))
    memory = training_memory(
        spec, plan, batch, optimizer_states=states, precision=opts.precision
    ).total_gb
    found = Preflight(
        feasible=True,
        params=plan.params,
        gflops=round(2 * plan.macs / 1e9, 3),
        memory_gb=round(memory, 3),
        budget_gb=opts.memory_gb,
        batch_size=batch,
    )
    if memory > opts.memory_gb:
        return replace(
            found,
            feasible=False,
            reason=(
                f"over budget: a training step needs {memory:.2f} GB at batch {batch} "
                f"({opts.precision}), more than planner.memory_gb={opts.memory_gb:g}. Fix: "
                f"planner.memory_gb={math.ceil(memory * 10) / 10:g}, a smaller data.batch_size or "
                "data.patch_size, or drop this combination"
            ),
        )
    return found
