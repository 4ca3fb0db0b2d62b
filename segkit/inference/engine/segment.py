"""Label maps (and probabilities, and per-tile logits) of one volume from one network or an
ensemble: the engine's entry point for validation, calibration and ``segkit predict``.

Each network's tiles come from the one loop (:func:`~segkit.inference.engine.sliding.model_tiles`)
in one shared :class:`~segkit.inference.engine.sliding.Layout`, so the networks of an ensemble
hand out the same tiles in the same order. Per tile: one network's labels come from its
logits (:meth:`OutputHead.labels_from_logits`); an ensemble averages the networks'
probabilities (softmax classes or sigmoid regions), then takes labels, or, with
``average="logits"``, averages their logits as nnU-Net's predictor averages its folds.
What stays for the whole volume is the label map (1 or 2 bytes a voxel); probabilities go
tile by tile to a ``consumer`` (``save_probabilities`` writes them to disk).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from segkit.errors import ConfigError
from segkit.inference.engine.memory import GiB, InferencePlan, plan_inference
from segkit.inference.engine.outputs import OutputHead
from segkit.inference.engine.settings import Decision, default_budget
from segkit.inference.engine.sliding import ModelRun, model_tiles

# (box, tensor (K, *box)) of one finalised tile
TileConsumer = Callable[[tuple[slice, ...], torch.Tensor], None]
AVERAGES = ("probabilities", "logits")


@dataclass(frozen=True)
class Segmentation:
    """Labels on the preprocessed grid, and what ran.

    Attributes:
        labels: (*S) uint8/int16 (the head's label dtype), on the CPU.
        plan: per network the mode/window decision; the layout, batches and estimate.
    """

    labels: torch.Tensor
    plan: InferencePlan

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return self.plan.decisions


def plan_for(
    runs: Sequence[ModelRun],
    image: torch.Tensor,
    head: OutputHead,
    *,
    classes: int,
    max_memory_gb: float | None = None,
    probabilities: bool = False,
) -> InferencePlan:
    """Each network's decision and the layout for ``image`` (1, C, *S) (see
    :mod:`segkit.inference.engine.memory`)."""
    if image.dim() not in (4, 5) or image.shape[0] != 1:
        raise ConfigError(
            f"inference: expected one volume (1, C, *S), got a tensor of shape {tuple(image.shape)}"
        )
    size = tuple(image.shape[2:])
    budget = None if max_memory_gb is None else int(max_memory_gb * GiB)
    # a whole-volume pass holds every class's logits for the volume: auto takes it only where
    # those fit as well as the pass (the default budget: 4 GiB on the CPU, half the free GPU)
    whole_budget = max(
        0,
        (default_budget(image.device) if budget is None else budget)
        - 4 * classes * math.prod(size) * (1 + len(runs)),
    )
    decisions = [r.decide(size, memory_budget=whole_budget, device=image.device) for r in runs]
    return plan_inference(
        runs,
        decisions,
        size=size,
        channels=image.shape[1],
        classes=classes,
        label_bytes=head.label_dtype(classes).itemsize,
        budget=budget,
        probabilities=probabilities,
    )


def segment(
    runs: Sequence[ModelRun],
    image: torch.Tensor,
    head: OutputHead,
    *,
    classes: int,
    max_memory_gb: float | None = None,
    probabilities: TileConsumer | None = None,
    logits: TileConsumer | None = None,
    progress: bool = False,
    average: str = "probabilities",
) -> Segmentation:
    """Labels of ``image`` (1, C, *S) from ``runs`` (one network, or an ensemble).

    Args:
        runs: the networks (eval mode) and their settings.
        image: the preprocessed volume, batch of one, on the networks' device.
        head: how outputs become probabilities and labels.
        classes: output channels of the networks.
        max_memory_gb: the budget the layout and window batch are chosen for; None: each
            accumulator under :data:`~segkit.inference.engine.memory.ACCUMULATOR_BYTES`.
        probabilities: receives every tile's probabilities (averaged over the networks).
        logits: receives every tile's logits (one network, or the ensemble's mean logits
            with ``average="logits"``; e.g. validation's loss, nnU-Net's export).
        progress: a progress bar over forward calls.
        average: how an ensemble is averaged: ``probabilities`` (segkit's ensembles) or
            ``logits`` (nnU-Net's folds).

    Raises:
        ConfigError: ``logits`` of an ensemble averaging probabilities; a budget too small
            (naming the smallest that works).
    """
    if average not in AVERAGES:
        raise ConfigError(f"segment: average={average!r}; allowed: {', '.join(AVERAGES)}")
    if logits is not None and len(runs) != 1 and average != "logits":
        raise ConfigError(
            "segment: per-tile logits of an ensemble exist only with average='logits'"
        )
    plan = plan_for(
        runs,
        image,
        head,
        classes=classes,
        max_memory_gb=max_memory_gb,
        probabilities=probabilities is not None,
    )
    labels = torch.empty(plan.layout.size, dtype=head.label_dtype(classes))
    sources = [
        model_tiles(run, image, d, plan.layout, batch=b, progress=progress)
        for run, d, b in zip(runs, plan.decisions, plan.batches)
    ]
    for tiles in zip(*sources, strict=True):
        box = tiles[0].box
        if len(tiles) == 1 or average == "logits":  # labels from (mean) logits
            mean = tiles[0].logits
            if len(tiles) > 1:  # a new tensor (the tiles' are inference tensors)
                mean = mean + tiles[1].logits
                for t in tiles[2:]:
                    mean += t.logits
                mean /= len(tiles)
            if logits is not None:
                logits(box, mean)
            lab = head.labels_from_logits(mean, dim=0)
            if probabilities is not None:
                probabilities(box, head.probabilities(mean, dim=0))
        else:
            probs = head.probabilities(tiles[0].logits, dim=0)
            for t in tiles[1:]:
                probs += head.probabilities(t.logits, dim=0)
            probs /= len(tiles)
            lab = head.labels(probs, dim=0)
            if probabilities is not None:
                probabilities(box, probs)
        labels[box] = lab.to(device=labels.device, dtype=labels.dtype)
    return Segmentation(labels=labels, plan=plan)
