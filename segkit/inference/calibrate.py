"""Choose the cheapest sliding-window setting that loses no accuracy, by measuring it.

At the end of training the validation fold is predicted at a few sliding-window settings
(overlap × window size). The cheapest setting whose mean foreground Dice is within
``tolerance`` of the best is stored in the checkpoint, and ``segkit predict`` uses it by
default (an explicit ``overlap=``/``window_scale=`` wins). Cost is the number of voxels
the network processes (windows × window volume, summed over the cases): deterministic,
and proportional to the time of the network, which dominates inference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from segkit.defaults import (
    CALIBRATION_OVERLAPS,
    CALIBRATION_TOLERANCE,
    CALIBRATION_WINDOW_SCALES,
    SLICE_AXIS,
)
from segkit.errors import ConfigError
from segkit.inference.engine.outputs import SOFTMAX, OutputHead
from segkit.inference.engine.segment import segment
from segkit.inference.engine.settings import InferenceSettings
from segkit.inference.engine.sliding import ModelRun
from segkit.inference.metrics.dice import mean_dice
from segkit.table import format_table


@dataclass(frozen=True)
class CalibrationRow:
    """One measured setting.

    Attributes:
        overlap: sliding-window overlap.
        window_scale: window size as a multiple of the training patch.
        dice_mean: mean foreground Dice on the validation cases.
        dice: per-class mean Dice (NaN where a class never occurs).
        voxels: voxels processed by the network over all cases (the cost).
        seconds: wall time over all cases.
    """

    overlap: float
    window_scale: float
    dice_mean: float
    dice: tuple[float, ...]
    voxels: int
    seconds: float


@dataclass(frozen=True)
class Calibration:
    """The measured settings and the one chosen.

    Attributes:
        rows: every setting measured.
        chosen: index of the chosen row in ``rows``.
        tolerance: allowed loss of mean Dice against the best row.
        cases: number of validation cases measured.
    """

    rows: tuple[CalibrationRow, ...]
    chosen: int
    tolerance: float
    cases: int

    @property
    def best(self) -> CalibrationRow:
        return self.rows[self.chosen]

    def settings(self, base: InferenceSettings | None = None) -> InferenceSettings:
        """``base`` (default settings) with the chosen overlap and window scale."""
        base = base or InferenceSettings()
        return InferenceSettings(
            mode=base.mode,
            overlap=self.best.overlap,
            window_scale=self.best.window_scale,
            sw_batch_size=base.sw_batch_size,
            tta=base.tta,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as stored in checkpoints (``segkit_inference``) and metrics.json."""
        return {
            "overlap": self.best.overlap,
            "window_scale": self.best.window_scale,
            "dice_mean": self.best.dice_mean,
            "tolerance": self.tolerance,
            "cases": self.cases,
            "rows": [asdict(r) | {"dice": list(r.dice)} for r in self.rows],
        }

    def table(self) -> str:
        top = max(r.dice_mean for r in self.rows)
        header = ("overlap", "window", "mean Dice", "vs best", "voxels (cost)", "seconds", "chosen")
        body = [
            (
                f"{r.overlap:g}",
                f"{r.window_scale:g}× patch",
                f"{r.dice_mean:.4f}",
                f"{r.dice_mean - top:+.4f}",
                f"{r.voxels:,}",
                f"{r.seconds:.1f}",
                "←" if i == self.chosen else "",
            )
            for i, r in enumerate(self.rows)
        ]
        return format_table(header, body)


def choose(rows: Sequence[CalibrationRow], tolerance: float) -> int:
    """Index of the cheapest row within ``tolerance`` of the best mean Dice."""
    if not rows:
        raise ConfigError("calibration: no settings to choose from")

    def value(r: CalibrationRow) -> float:  # no foreground anywhere: every setting ties
        return 0.0 if math.isnan(r.dice_mean) else r.dice_mean

    top = max(value(r) for r in rows)
    ok = [i for i, r in enumerate(rows) if value(r) >= top - tolerance]
    return min(ok, key=lambda i: (rows[i].voxels, -value(rows[i])))


def _classes(net: nn.Module, head: OutputHead) -> int:
    spec = getattr(net, "spec", None)
    return int(spec.out_channels) if spec is not None else len(head.region_order)


def calibrate(
    net: nn.Module,
    cases: Iterable[tuple[str, torch.Tensor, torch.Tensor]],
    score: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    patch_size: Sequence[int],
    head: OutputHead = SOFTMAX,
    slice_axis: int = SLICE_AXIS,
    overlaps: Sequence[float] = CALIBRATION_OVERLAPS,
    window_scales: Sequence[float] = CALIBRATION_WINDOW_SCALES,
    tolerance: float = CALIBRATION_TOLERANCE,
    sw_batch_size: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Calibration:
    """Measures every (overlap, window scale) on the cases and chooses the cheapest good one.

    Args:
        net: the trained network in eval mode.
        cases: ``(case id, image (1, C, *S), label (*S))``; iterated once.
        score: ``(case id, predicted labels (*S), label (*S)) -> per-class (or per-region)
            Dice`` (NaN where absent), e.g. on the case's original grid as ``segkit
            evaluate`` scores it.
        patch_size: the training patch.
        head: turns the network's outputs into labels (softmax classes or sigmoid regions).
        slice_axis: for 2D networks on volumes, the sliced axis.
        overlaps: overlaps to try.
        window_scales: window sizes to try, as multiples of the patch.
        tolerance: mean Dice the chosen setting may lose against the best.
        sw_batch_size: windows per forward call (None: the engine's default).
        log: called with one line per measured setting.
    """
    if not overlaps or not window_scales:
        raise ConfigError("calibrate_inference: overlaps and window_scales must not be empty")
    grid = [
        InferenceSettings(
            mode="sliding", overlap=float(o), window_scale=float(w), sw_batch_size=sw_batch_size
        )
        for w in window_scales
        for o in overlaps
    ]
    dice: list[list[torch.Tensor]] = [[] for _ in grid]
    voxels = [0] * len(grid)
    seconds = [0.0] * len(grid)
    n = 0
    for case_id, image, label in cases:
        n += 1
        for i, settings in enumerate(grid):
            start = time.perf_counter()
            run = ModelRun(net, tuple(patch_size), settings, slice_axis)
            result = segment([run], image, head, classes=_classes(net, head))
            seconds[i] += time.perf_counter() - start
            decision = result.decisions[0]
            slices = image.shape[2 + slice_axis] if image.dim() - 2 > len(decision.size) else 1
            voxels[i] += decision.voxels * slices
            pred = result.labels.to(label.device)
            dice[i].append(score(case_id, pred, label).double().cpu())
    if n == 0:
        raise ConfigError("calibrate_inference: the validation fold has no cases")
    rows = []
    for i, settings in enumerate(grid):
        per_class, mean = mean_dice(torch.stack(dice[i]))
        rows.append(
            CalibrationRow(
                overlap=settings.overlap,
                window_scale=settings.window_scale,
                dice_mean=mean,
                dice=tuple(per_class.tolist()),
                voxels=voxels[i],
                seconds=round(seconds[i], 3),
            )
        )
        if log:
            log(
                f"calibration: overlap {settings.overlap:g}, window {settings.window_scale:g}× "
                f"patch: mean Dice {mean:.4f}, {voxels[i]:,} voxels, {seconds[i]:.1f} s"
            )
    return Calibration(
        rows=tuple(rows), chosen=choose(rows, tolerance), tolerance=tolerance, cases=n
    )
