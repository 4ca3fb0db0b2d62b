"""Dice and HD95 of predicted label maps against reference labels, per case and class.

HD95 is segkit's own implementation on ``scipy.ndimage``: surfaces are the
voxels of a mask that touch the background (6-connectivity); the distance of
every surface voxel of one mask to the other mask's surface comes from a
Euclidean distance transform in millimetres (the label header's voxel
spacing). HD95 is the larger of the two directed 95th percentiles
(prediction→reference and reference→prediction), the convention of MONAI's
``compute_hausdorff_distance(percentile=95)``; a test checks it against MONAI.

Conventions: a class absent from both prediction and reference is NaN for
both metrics (and left out of the means); a class present in only one of them
has Dice 0 and HD95 NaN (no finite distance exists). A reference case without a
prediction is scored as an empty prediction — a failure, Dice 0 for every class
in its reference — and marked ``no prediction``. Means follow
`segkit.inference.scoring.mean_dice`, like ``val/dice_mean`` during training:
per class the mean over cases, then the mean over classes (NaN left out).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from segkit.data.io import NIFTI_SUFFIXES, atomic_path, read_nifti, strip_nifti_suffix
from segkit.errors import DataError
from segkit.inference.scoring import case_dice, mean_dice

_AFFINE_ATOL = 1e-3


@dataclass(frozen=True)
class CaseScores:
    """Metrics of one case.

    Attributes:
        case_id: the case's name.
        dice: per foreground class (index 1..K-1).
        hd95: per foreground class, millimetres.
        missing: no prediction exists; scored as an empty one (a failure).
    """

    case_id: str
    dice: tuple[float, ...]
    hd95: tuple[float, ...]
    missing: bool = False


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """The larger directed 95th percentile surface distance (mm); NaN if a mask is empty."""
    if not pred.any() or not ref.any():
        return math.nan
    sp, sr = _surface(pred), _surface(ref)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(to_ref[sp], 95), np.percentile(to_pred[sr], 95)))


def score_case(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    num_classes: int,
    spacing: Sequence[float],
    case_id: str = "case",
    missing: bool = False,
) -> CaseScores:
    """Dice (`scoring.case_dice`, as in validation) and HD95 for classes ``1..num_classes-1``."""
    d = case_dice(torch.from_numpy(pred), torch.from_numpy(ref), num_classes).tolist()
    h = [hd95(pred == c, ref == c, spacing) for c in range(1, num_classes)]
    return CaseScores(case_id=case_id, dice=tuple(d), hd95=tuple(h), missing=missing)


def _by_case(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{what}={folder}: no such directory.")
    files = {
        strip_nifti_suffix(p.name): p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_SUFFIXES)
    }
    if not files:
        raise DataError(f"{what}={folder}: holds no NIfTI files (*.nii, *.nii.gz).")
    return files


def evaluate(
    *,
    pred: str | Path,
    labels: str | Path,
    num_classes: int | None = None,
    progress: bool = False,
) -> list[CaseScores]:
    """Scores every reference case in ``labels`` against the prediction of the same name.

    A reference case without a prediction is scored as an empty prediction (Dice 0 for
    every class in its reference, HD95 NaN) and flagged `CaseScores.missing`, so a
    partial prediction folder cannot raise the mean.

    Args:
        pred: folder of predicted label maps (``{case}.nii.gz``).
        labels: folder of reference label maps with the same names.
        num_classes: classes incl. background; default: largest value found + 1.

    Returns:
        One `CaseScores` per reference case, in name order.

    Raises:
        DataError: a prediction without reference, grid mismatch, non-integer labels.
    """
    preds = _by_case(Path(pred), "pred")
    refs = _by_case(Path(labels), "labels")
    unmatched = sorted(set(preds) - set(refs))
    if unmatched:
        raise DataError(
            f"labels={labels}: no reference for predicted case(s) {unmatched[:5]}. Fix: point "
            "labels= at the folder whose files have the same names (e.g. labelsTr/)."
        )
    loaded = []
    for case_id, r in sorted(refs.items()):
        rv = read_nifti(r, kind="label")
        pv = read_nifti(preds[case_id], kind="label") if case_id in preds else None
        if pv is not None and (
            pv.data.shape != rv.data.shape
            or not np.allclose(pv.affine, rv.affine, atol=_AFFINE_ATOL)
        ):
            raise DataError(
                f"{pv.path}: grid {pv.data.shape} does not match reference {rv.path} "
                f"{rv.data.shape} (or their affines differ). Fix: compare predictions "
                "written for these very images."
            )
        for v in (pv, rv):
            if v is not None and not np.all(np.equal(np.mod(v.data, 1), 0)):
                raise DataError(f"{v.path}: holds non-integer values; expected class indices.")
        ref = rv.data.astype(np.int64)
        prd = np.zeros_like(ref) if pv is None else pv.data.astype(np.int64)
        loaded.append((case_id, prd, ref, rv.spacing, pv is None))
    k = num_classes or int(max(max(a.max(), b.max()) for _, a, b, _, _ in loaded)) + 1
    k = max(k, 2)
    items = loaded
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(loaded, desc="cases", leave=False)
    return [
        score_case(a, b, num_classes=k, spacing=sp[:3], case_id=case_id, missing=missing)
        for case_id, a, b, sp, missing in items
    ]


def _means(rows: Sequence[Sequence[float]]) -> tuple[list[float], float]:
    per_class, mean = mean_dice(torch.tensor(rows, dtype=torch.float64))
    return per_class.tolist(), mean


def summary_rows(scores: Sequence[CaseScores]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per case, then ``mean``) with Dice and HD95 per class.

    A case's ``dice_mean`` is the mean over its classes; the ``mean`` row holds each
    class's mean over cases and, as ``dice_mean``, their mean over classes (NaN left
    out) — the number ``val/dice_mean`` reports during training.
    """
    k = len(scores[0].dice)
    header = ["case", "status"] + [f"dice_{c}" for c in range(1, k + 1)] + ["dice_mean"]
    header += [f"hd95_{c}" for c in range(1, k + 1)] + ["hd95_mean"]
    rows = []
    for s in scores:
        status = "no prediction (failure)" if s.missing else "ok"
        rows.append([s.case_id, status, *s.dice, _means([s.dice])[1], *s.hd95, _means([s.hd95])[1]])
    dice_class, dice_mean = _means([s.dice for s in scores])
    hd_class, hd_mean = _means([s.hd95 for s in scores])
    missing = sum(s.missing for s in scores)
    status = f"{len(scores)} cases" + (f", {missing} without prediction" if missing else "")
    rows.append(["mean", status, *dice_class, dice_mean, *hd_class, hd_mean])
    return header, [[r[0], r[1], *(f"{v:.4f}" for v in r[2:])] for r in rows]


def describe_missing(scores: Sequence[CaseScores]) -> str:
    """One line naming the reference cases without a prediction ("" if there are none)."""
    missing = [s.case_id for s in scores if s.missing]
    if not missing:
        return ""
    return (
        f"{len(missing)} of {len(scores)} reference case(s) have no prediction: "
        f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; counted as failures "
        "(Dice 0 for every class in their reference, HD95 undefined and left out)."
    )


def write_csv(path: str | Path, header: list[str], rows: list[list[str]]) -> Path:
    """Writes the table atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path
