"""Dice and HD95 of predicted label maps against reference labels, per case and class.

HD95 is segkit's own implementation on ``scipy.ndimage``: surfaces are the
voxels of a mask that touch the background (6-connectivity); the distance of
every surface voxel of one mask to the other mask's surface comes from a
Euclidean distance transform in millimetres (the label header's voxel
spacing), and HD95 is the 95th percentile of both directions pooled (the
convention of MONAI's ``compute_hausdorff_distance(percentile=95)`` and of the
``surface-distance`` package's ``compute_robust_hausdorff``).

Conventions: a class absent from both prediction and reference is NaN for
both metrics (and left out of the means); a class present in only one of them
has Dice 0 and HD95 NaN (no finite distance exists).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from segkit.data.io import NIFTI_SUFFIXES, atomic_path, read_nifti, strip_nifti_suffix
from segkit.errors import DataError

_AFFINE_ATOL = 1e-3


@dataclass(frozen=True)
class CaseScores:
    """Metrics of one case.

    Attributes:
        case_id: the case's name.
        dice: per foreground class (index 1..K-1).
        hd95: per foreground class, millimetres.
    """

    case_id: str
    dice: tuple[float, ...]
    hd95: tuple[float, ...]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile symmetric surface distance (mm); NaN if either mask is empty."""
    if not pred.any() or not ref.any():
        return math.nan
    sp, sr = _surface(pred), _surface(ref)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    distances = np.concatenate([to_ref[sp], to_pred[sr]])
    return float(np.percentile(distances, 95))


def score_case(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    num_classes: int,
    spacing: Sequence[float],
    case_id: str = "case",
) -> CaseScores:
    """Dice and HD95 for classes ``1..num_classes-1``."""
    d, h = [], []
    for c in range(1, num_classes):
        p, r = pred == c, ref == c
        d.append(dice(p, r))
        h.append(hd95(p, r, spacing))
    return CaseScores(case_id=case_id, dice=tuple(d), hd95=tuple(h))


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
    """Scores every prediction in ``pred`` against the label of the same name in ``labels``.

    Args:
        pred: folder of predicted label maps (``{case}.nii.gz``).
        labels: folder of reference label maps with the same names.
        num_classes: classes incl. background; default: largest value found + 1.

    Raises:
        DataError: missing counterparts, grid mismatch, non-integer labels.
    """
    preds = _by_case(Path(pred), "pred")
    refs = _by_case(Path(labels), "labels")
    missing = sorted(set(preds) - set(refs))
    if missing:
        raise DataError(
            f"labels={labels}: no reference for predicted case(s) {missing[:5]}. Fix: point "
            "labels= at the folder whose files have the same names (e.g. labelsTr/)."
        )
    loaded = []
    for case_id, p in preds.items():
        pv, rv = read_nifti(p, kind="label"), read_nifti(refs[case_id], kind="label")
        if pv.data.shape != rv.data.shape or not np.allclose(
            pv.affine, rv.affine, atol=_AFFINE_ATOL
        ):
            raise DataError(
                f"{p}: grid {pv.data.shape} does not match reference {rv.path} "
                f"{rv.data.shape} (or their affines differ). Fix: compare predictions "
                "written for these very images."
            )
        for v in (pv, rv):
            if not np.all(np.equal(np.mod(v.data, 1), 0)):
                raise DataError(f"{v.path}: holds non-integer values; expected class indices.")
        loaded.append((case_id, pv.data.astype(np.int64), rv.data.astype(np.int64), rv.spacing))
    k = num_classes or int(max(max(a.max(), b.max()) for _, a, b, _ in loaded)) + 1
    k = max(k, 2)
    items = loaded
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(loaded, desc="cases", leave=False)
    return [
        score_case(a, b, num_classes=k, spacing=sp[:3], case_id=case_id)
        for case_id, a, b, sp in items
    ]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summary_rows(scores: Sequence[CaseScores]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per case, then ``mean``) with Dice and HD95 per class."""
    k = len(scores[0].dice)
    header = ["case"] + [f"dice_{c}" for c in range(1, k + 1)] + ["dice_mean"]
    header += [f"hd95_{c}" for c in range(1, k + 1)] + ["hd95_mean"]
    rows = []
    for s in scores:
        rows.append([s.case_id, *s.dice, _mean(s.dice), *s.hd95, _mean(s.hd95)])
    columns = list(zip(*[r[1:] for r in rows]))
    rows.append(["mean", *[_mean(col) for col in columns]])
    return header, [[r[0], *(f"{v:.4f}" for v in r[1:])] for r in rows]


def write_csv(path: str | Path, header: list[str], rows: list[list[str]]) -> Path:
    """Writes the table atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path
