"""Dice from confusion counts, for classes and regions alike, and the one way segkit averages it.

Every Dice segkit reports is read off one table of voxel counts, ``[predicted value,
reference value]`` of two label maps (`confusion`). A class is the set of one label value,
a region (``dataset.json`` labels mapped to lists of values, BraTS) the set of several; for
a set V, ``|P ∩ R|`` is the sum of the cells in V×V, ``|P|`` that of the rows in V and
``|R|`` that of the columns in V (`set_dice`): integer counts, then one float64 division, so
numpy and torch, CPU and GPU give the same bits.

Validation during training, the end-of-training calibration, ``segkit evaluate`` and
``segkit select`` report the same number, "mean foreground Dice": per foreground class (or
region) the mean over cases (a case where it is absent from both prediction and reference is
left out), then the mean over classes (one absent from every case is left out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from segkit.data.regions import Region

# voxels counted at a time: bounds the temporaries (masks, keys) for a whole-body CT
_CHUNK = 1 << 22


def confusion(
    pred: torch.Tensor | np.ndarray,
    ref: torch.Tensor | np.ndarray,
    num_values: int,
    *,
    ignore_label: int | None = None,
) -> torch.Tensor:
    """Voxel counts ``[predicted value, reference value]`` of two integer label maps.

    Args:
        pred: predicted labels (*S), torch or numpy.
        ref: reference labels (*S).
        num_values: K; every counted value must lie in ``0..K-1``.
        ignore_label: reference value of unannotated voxels; they are left out of every
            count (prediction and reference alike). None: every voxel counts.

    Returns:
        (K, K) int64 tensor, on the labels' device.

    Raises:
        ValueError: the shapes differ, or a counted value is negative or K or more.
    """
    if tuple(pred.shape) != tuple(ref.shape):
        raise ValueError(f"prediction {tuple(pred.shape)} and reference {tuple(ref.shape)} differ")
    pred, ref = pred.reshape(-1), ref.reshape(-1)
    cells = num_values * num_values
    # the narrowest key type holding every cell index: a uint8 map is counted as uint8
    key = torch.uint8 if cells <= 256 else torch.int32 if cells < 2**31 else torch.int64
    device = pred.device if isinstance(pred, torch.Tensor) else "cpu"
    counts = torch.zeros(cells, dtype=torch.int64, device=device)
    for start in range(0, math.prod(pred.shape), _CHUNK):
        p, r = (_tensor(a[start : start + _CHUNK]) for a in (pred, ref))
        if ignore_label is not None:
            keep = r != ignore_label
            p, r = p[keep], r[keep]
        if not p.numel():
            continue
        bounds = [int(v) for a in (p, r) for v in torch.aminmax(a)]
        if min(bounds) < 0 or max(bounds) >= num_values:
            raise ValueError(
                f"label values {min(bounds)}..{max(bounds)} found, but num_values={num_values} "
                f"counts only 0..{num_values - 1}. Fix: pass a larger num_values (values "
                "are class indices >= 0)."
            )
        counts += torch.bincount(p.to(key) * num_values + r.to(key), minlength=cells)
    return counts.reshape(num_values, num_values)


def _tensor(part: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A chunk as a tensor; numpy's wide unsigned types (which torch cannot reduce) and
    read-only arrays (which torch warns about) as an int64 copy."""
    if isinstance(part, torch.Tensor):
        return part
    if (part.dtype.kind == "u" and part.itemsize > 1) or not part.flags.writeable:
        part = part.astype(np.int64)
    return torch.from_numpy(part)


def set_dice(counts: torch.Tensor, sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Dice of each set of label values (a class: one value; a region: several).

    Args:
        counts: (K, K) `confusion` counts.
        sets: label values per set; values of K or more are in neither map.

    Returns:
        Float64 tensor of ``len(sets)`` values, ``2|P ∩ R| / (|P| + |R|)`` with P, R the
        voxels whose predicted / reference value is in the set; NaN where both are empty.
    """
    k = counts.shape[0]
    member = torch.zeros(len(sets), k, dtype=torch.float64, device=counts.device)
    for i, values in enumerate(sets):
        member[i, [v for v in values if v < k]] = 1.0
    # integer counts summed in float64 stay exact up to 2**53 voxels
    c = counts.double()
    inter = ((member @ c) * member).sum(1)
    total = member @ c.sum(1) + member @ c.sum(0)
    dice = 2 * inter / total.clamp_min(1)
    return torch.where(total > 0, dice, torch.full_like(dice, math.nan))


def case_dice(
    pred: torch.Tensor | np.ndarray,
    ref: torch.Tensor | np.ndarray,
    num_classes: int,
    *,
    ignore_label: int | None = None,
) -> torch.Tensor:
    """Dice of foreground classes ``1..K-1`` for one case; NaN where absent from both.

    Args:
        pred: predicted labels (*S), integer, torch or numpy.
        ref: reference labels (*S), integer.
        num_classes: classes including background.
        ignore_label: reference value of unannotated voxels; they are left out of the
            score (prediction and reference alike). None: every voxel counts.

    Returns:
        Float64 tensor of ``num_classes - 1`` values.
    """
    counts = confusion(pred, ref, num_classes, ignore_label=ignore_label)
    return set_dice(counts, [(c,) for c in range(1, num_classes)])


def case_region_dice(
    pred: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray, regions: Sequence[Region]
) -> list[float]:
    """Dice of each region of a predicted and a reference label map; NaN where absent from both.

    Args:
        pred: predicted labels (*S), integer, torch or numpy.
        ref: reference labels (*S), integer.
        regions: the regions, each a set of label values (``dataset.json``).

    Returns:
        One value per region, in order.
    """
    tops = [int(a.max()) for a in (pred, ref) if math.prod(a.shape)]
    num_values = 1 + max(tops + [max(r.labels) for r in regions])
    return set_dice(confusion(pred, ref, num_values), [r.labels for r in regions]).tolist()


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
