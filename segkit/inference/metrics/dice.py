"""Dice per case and class, and the one way segkit averages it.

Validation during training, the end-of-training calibration and ``segkit evaluate``
report the same number, "mean foreground Dice": per foreground class the mean over
cases (a case where the class is absent from both prediction and reference is left
out), then the mean over classes (a class absent from every case is left out).
"""

from __future__ import annotations

import math

import torch


def case_dice(
    pred: torch.Tensor, ref: torch.Tensor, num_classes: int, *, ignore_label: int | None = None
) -> torch.Tensor:
    """Dice of foreground classes ``1..K-1`` for one case; NaN where absent from both.

    Args:
        pred: predicted labels (*S), integer.
        ref: reference labels (*S), integer.
        num_classes: classes including background.
        ignore_label: reference value of unannotated voxels; they are left out of the
            score (prediction and reference alike). None: every voxel counts.

    Returns:
        Float64 tensor of ``num_classes - 1`` values.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and reference {tuple(ref.shape)} differ")
    pred, ref = pred.reshape(-1).long(), ref.reshape(-1).long()
    if ignore_label is not None:
        annotated = ref != ignore_label
        pred, ref = pred[annotated], ref[annotated]
    both = torch.bincount(pred * num_classes + ref, minlength=num_classes * num_classes)
    confusion = both.reshape(num_classes, num_classes).double()  # [pred, ref]
    inter = confusion.diagonal()[1:]
    total = confusion.sum(1)[1:] + confusion.sum(0)[1:]
    dice = 2 * inter / total.clamp_min(1)
    return torch.where(total > 0, dice, torch.full_like(dice, math.nan))


def mean_dice(per_case: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-class means over cases and their mean (NaN entries left out).

    Args:
        per_case: (cases, classes) Dice values with NaN where a class is absent.

    Returns:
        ``(per_class, mean)``; a class absent from every case is NaN in ``per_class``
        and left out of ``mean``; ``mean`` is NaN when no class occurs at all.
    """
    per_case = per_case.double().reshape(-1, per_case.shape[-1])
    per_class = torch.nanmean(per_case, dim=0)
    present = per_class[~per_class.isnan()]
    return per_class, float(present.mean()) if present.numel() else math.nan
