"""Learning-rate schedules over training progress: the steps done or the time spent.

A schedule is a function of progress ``p`` in [0, 1]: poly ``(1 - p)^exponent``, or a
linear warm-up then a cosine to ``eta_min``. Progress is the fraction of the step budget
(``trainer.estimated_stepping_batches``) or of the time budget (``trainer.max_time``,
measured by Lightning's :class:`~pytorch_lightning.callbacks.Timer`, whose state a resumed
run restores), whichever is further along; so a run stopped by ``max_time`` ends annealed
instead of at a high learning rate. ``optim.scheduler.over`` chooses: ``steps``, ``time``,
or ``auto`` (both where both are configured, the one that ends first wins).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from pytorch_lightning.callbacks import Timer

from segkit.errors import ConfigError

log = logging.getLogger("segkit")

OVER = ("auto", "steps", "time")
KEYS = {
    "poly": {"name", "over", "exponent"},
    "cosine": {"name", "over", "warmup_fraction", "eta_min"},
}
# the warm-up starts at 1% of the base rate (torch's LinearLR start_factor segkit always used)
WARMUP_START = 0.01


@dataclass(frozen=True)
class Schedule:
    """The learning rate at progress ``p`` for a base rate.

    Args:
        name: ``poly`` or ``cosine``.
        exponent: poly's power.
        warmup: progress at which cosine's linear warm-up ends.
        span: progress the cosine part lasts (``1 - warmup``, at least one step).
        eta_min: cosine's final learning rate.
    """

    name: str
    exponent: float = 0.9
    warmup: float = 0.0
    span: float = 1.0
    eta_min: float = 0.0

    def lr(self, base: Any, p: float) -> Any:
        p = min(max(float(p), 0.0), 1.0)
        if self.name == "poly":
            return base * (1.0 - p) ** self.exponent
        if p < self.warmup:
            return base * (WARMUP_START + (1.0 - WARMUP_START) * p / self.warmup)
        q = min(1.0, (p - self.warmup) / self.span)
        return self.eta_min + (base - self.eta_min) * (1.0 + math.cos(math.pi * q)) / 2.0


@dataclass(frozen=True)
class Progress:
    """Training progress in [0, 1] after ``step`` optimizer steps.

    Args:
        total_steps: the step budget (``inf``: steps are not followed).
        duration: the time budget in seconds (None: time is not followed).
        elapsed: seconds of training so far, resumed runs included.
    """

    total_steps: float = math.inf
    duration: float | None = None
    elapsed: Callable[[], float] | None = None

    def __call__(self, step: int) -> float:
        p = step / self.total_steps if math.isfinite(self.total_steps) else 0.0
        if self.duration is not None and self.elapsed is not None:
            p = max(p, self.elapsed() / self.duration)
        return min(1.0, p)


class ProgressLR(torch.optim.lr_scheduler.LRScheduler):
    """Sets each group's learning rate to ``schedule.lr(base, progress(step))`` every step.

    Only plain values go into ``state_dict`` (checkpoints are read with ``weights_only``);
    the schedule and the clock are rebuilt by ``configure_optimizers`` on resume.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        progress: Progress,
        last_epoch: int = -1,
    ) -> None:
        self.schedule = schedule
        self.progress = progress
        self.last_progress = 0.0
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self.last_progress = float(self.progress(self.last_epoch))
        return [self.schedule.lr(base, self.last_progress) for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        skip = ("optimizer", "schedule", "progress")
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def budget_timer(trainer: Any) -> Timer | None:
    """The trainer's :class:`Timer` that has a duration (what ``trainer.max_time`` adds)."""
    for cb in getattr(trainer, "callbacks", []):
        if isinstance(cb, Timer) and cb.time_remaining() is not None:
            return cb
    return None


def _timer_clock(trainer: Any, timer: Timer) -> tuple[float, Callable[[], float]]:
    # before fit starts the Timer reads no clock: elapsed is the restored offset, so this
    # sum is the duration exactly (Timer keeps it only in a private attribute)
    duration = timer.time_elapsed("train") + timer.time_remaining("train")

    def elapsed() -> float:
        seconds = timer.time_elapsed("train")
        # every rank must set the same rate: rank 0's clock, as the Timer's stop decision
        if getattr(trainer, "world_size", 1) > 1:
            seconds = float(trainer.strategy.broadcast(seconds, src=0))
        return seconds

    return duration, elapsed


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: dict[str, Any], trainer: Any
) -> ProgressLR | None:
    """The step-interval scheduler of ``optim.scheduler`` (None for ``name: none``).

    Args:
        optimizer: the optimizer whose learning rates it sets.
        cfg: ``name`` (poly | cosine | none), ``over`` (auto | steps | time) and the
            schedule's own keys (poly: ``exponent``; cosine: ``warmup_fraction``, ``eta_min``).
        trainer: the Lightning trainer (its step estimate and its ``max_time`` Timer).
    """
    name = cfg.get("name", "none")
    if name in ("none", None):
        return None
    if name not in KEYS:
        raise ConfigError(f"optim.scheduler.name: got {name!r}; allowed: poly, cosine, none")
    unknown = sorted(set(cfg) - KEYS[name])
    if unknown:
        raise ConfigError(
            f"optim.scheduler: unknown key(s) {', '.join(unknown)} for name={name}; "
            f"allowed: {', '.join(sorted(KEYS[name]))}"
        )
    over = cfg.get("over", "auto")
    if over not in OVER:
        raise ConfigError(f"optim.scheduler.over: got {over!r}; allowed: {', '.join(OVER)}")
    timer = budget_timer(trainer) if over != "steps" else None
    if over == "time" and timer is None:
        raise ConfigError(
            "optim.scheduler.over=time needs a time budget: set trainer.max_time=DD:HH:MM:SS "
            "(e.g. 00:02:00:00), or use over=auto to anneal over the steps"
        )
    steps = float(trainer.estimated_stepping_batches) if over != "time" else math.inf
    total = max(1, int(steps)) if math.isfinite(steps) else math.inf
    if timer is None and not math.isfinite(total):
        raise ConfigError(
            "optim.scheduler: the schedule needs an end; set trainer.max_epochs or "
            "trainer.max_steps, or trainer.max_time=DD:HH:MM:SS"
        )
    duration, elapsed = _timer_clock(trainer, timer) if timer is not None else (None, None)
    progress = Progress(total_steps=total, duration=duration, elapsed=elapsed)

    if name == "poly":
        schedule = Schedule("poly", exponent=float(cfg.get("exponent", 0.9)))
    else:
        fraction = float(cfg.get("warmup_fraction", 0.05))
        if math.isfinite(total):
            # whole steps, as a step-counted warm-up always had: ceil(total * fraction) >= 1
            warm = max(1, math.ceil(total * fraction))
            warmup, span = warm / total, max(1, total - warm) / total
        else:
            warmup, span = fraction, max(1.0 - fraction, 1e-12)
        schedule = Schedule(
            "cosine", warmup=warmup, span=span, eta_min=float(cfg.get("eta_min", 0.0))
        )
    ends = []
    if math.isfinite(total):
        ends.append(f"{total} steps")
    if duration is not None:
        ends.append(f"{timedelta(seconds=round(duration))} of training time")
    log.info(
        "learning rate: %s over %s%s",
        name,
        " or ".join(ends),
        " (whichever ends first)" if len(ends) > 1 else "",
    )
    return ProgressLR(optimizer, schedule, progress)


__all__ = ["Progress", "ProgressLR", "Schedule", "budget_timer", "build_scheduler"]
