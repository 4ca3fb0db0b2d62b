"""Dice, HD95 and normalised surface Dice of predicted label maps, per case and class.

Dice is validation's: read off the case's confusion counts (`segkit.inference.metrics.dice`).
HD95 and NSD come from `segkit.inference.metrics.surface`, in millimetres of the label
header's voxel spacing (anisotropic spacing included), each in the convention of its usual
reference: HD95 as MONAI's ``compute_hausdorff_distance(percentile=95)`` (voxel surfaces,
the larger directed 95th percentile), NSD as DeepMind's ``surface-distance``
``compute_surface_dice_at_tolerance`` (area-weighted marching-cubes surface elements;
MONAI's ``compute_surface_dice(use_subvoxels=True)``). Tests check all three against
those libraries and against closed forms.

Conventions: a class absent from both prediction and reference is NaN for every
metric (left out of the means); a class present in only one of them has Dice 0,
NSD 0 and HD95 NaN (no finite distance exists). A reference case without a
prediction is scored as an empty prediction — a failure, Dice 0 and NSD 0 for every
class in its reference — and marked ``no prediction``. Means follow
`segkit.inference.metrics.dice.mean_dice`, like ``val/dice_mean`` during training: per
class the mean over cases, then the mean over classes (NaN left out).

`write_summary` writes nnU-Net's ``summary.json`` layout (``metric_per_case``,
``mean`` per label, ``foreground_mean``), with NaN written as ``null``.

Region datasets (``dataset.json`` labels mapped to lists of values, BraTS) are scored per
region as well (`segkit.data.regions`): a region's Dice is read off the same confusion
counts as the labels' (validation's to the last bit), its HD95 and NSD off the region masks
of both maps; ``summary.json`` then holds ``region_metrics`` per case, ``region_mean`` and
``region_foreground_mean`` beside the labels' entries.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from segkit.data.io import NIFTI_SUFFIXES, read_nifti, strip_nifti_suffix
from segkit.data.layouts import DatasetLabels, read_labels
from segkit.data.regions import Region
from segkit.errors import ConfigError, DataError
from segkit.fsio import atomic_path, save_json_atomic
from segkit.inference.metrics.dice import confusion, mean_dice, set_dice
from segkit.inference.metrics.surface import (
    crop_to_union,
    hd95_of_surfaces,
    surface_scores,
    voxel_surface,
)

_AFFINE_ATOL = 1e-3
# the largest class index a label map may hold (uint16; one score per class up to it)
_MAX_LABEL = 2**16 - 1
DEFAULT_NSD_TOLERANCE = 1.0
_METRICS = ("Dice", "HD95", "NSD")


@dataclass(frozen=True)
class CaseScores:
    """Metrics of one case.

    Attributes:
        case_id: the case's name.
        dice: per foreground class (index 1..K-1).
        hd95: per foreground class, millimetres.
        nsd: per foreground class, normalised surface Dice; empty: not computed.
        missing: no prediction exists; scored as an empty one (a failure).
        prediction_file: the predicted label map (None when missing).
        reference_file: the reference label map.
        regions: per region (region datasets; empty otherwise): ``(name, Dice, HD95,
            NSD)``.
    """

    case_id: str
    dice: tuple[float, ...]
    hd95: tuple[float, ...]
    nsd: tuple[float, ...] = ()
    missing: bool = False
    prediction_file: str | None = None
    reference_file: str | None = None
    regions: tuple[tuple[str, float, float, float], ...] = ()

    def padded(self, k: int) -> CaseScores:
        """The same scores for ``k`` foreground classes (classes it never saw are NaN)."""
        pad = (math.nan,) * (k - len(self.dice))
        nsd = self.nsd or (math.nan,) * len(self.dice)
        return CaseScores(
            self.case_id,
            self.dice + pad,
            self.hd95 + pad,
            nsd + pad,
            self.missing,
            self.prediction_file,
            self.reference_file,
            self.regions,
        )


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """The larger directed 95th percentile surface distance (mm); NaN if a mask is empty."""
    cropped = crop_to_union(pred.astype(bool, copy=False), ref.astype(bool, copy=False))
    if cropped is None:
        return math.nan
    return hd95_of_surfaces(voxel_surface(cropped[0]), voxel_surface(cropped[1]), spacing)


def nsd_tolerances(tolerance: float | Sequence[float], num_classes: int) -> list[float]:
    """One NSD tolerance (mm) per foreground class from one value or a per-class list.

    Raises:
        ConfigError: a negative or non-finite value, or a list shorter than the classes.
    """
    values = [tolerance] if isinstance(tolerance, (int, float)) else list(tolerance)
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"nsd_tolerance={tolerance!r}: expected numbers (mm)") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ConfigError(
            f"nsd_tolerance={tolerance!r}: expected finite values >= 0 mm, e.g. nsd_tolerance=1.0"
        )
    if len(values) == 1:
        return values * (num_classes - 1)
    if len(values) < num_classes - 1:
        raise ConfigError(
            f"nsd_tolerance={values}: {len(values)} values for {num_classes - 1} foreground "
            f"classes. Fix: give one value for all, or one per class 1..{num_classes - 1}."
        )
    return values[: num_classes - 1]


def score_case(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    num_classes: int,
    spacing: Sequence[float],
    nsd_tolerance: float | Sequence[float] = DEFAULT_NSD_TOLERANCE,
    case_id: str = "case",
    missing: bool = False,
    ignore_label: int | None = None,
    regions: Sequence[Region] = (),
    region_labels: Sequence[int] | None = None,
) -> CaseScores:
    """Dice, HD95 and NSD for classes ``1..K-1`` of two integer label maps.

    Reference voxels equal to ``ignore_label`` (unannotated) count for nothing: they are
    left out of the Dice counts, and where a case has any, HD95 and NSD are NaN (a surface
    is not known where the annotation stops).

    Dice is read off the case's confusion counts (`segkit.inference.metrics.dice`:
    validation's arithmetic, so the two agree to the last bit). Surfaces are computed in the
    bounding box of each class's prediction and reference, so a small structure in a large
    volume costs what its box costs.

    With ``regions`` (``region_labels``: the label value each writes, dataset.json
    ``regions_class_order``), each region's masks of both maps are scored too, their Dice
    read off the same counts.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ")
    tol = nsd_tolerances(nsd_tolerance, num_classes)
    sparse = ignore_label is not None and bool((ref == ignore_label).any())
    tops = [int(pred.max(initial=0)), int(ref.max(initial=0)), num_classes - 1]
    counts = confusion(
        pred, ref, 1 + max(tops + [max(r.labels) for r in regions]), ignore_label=ignore_label
    )
    dice = set_dice(counts, [(c,) for c in range(1, num_classes)]).tolist()
    hd, nsd = [math.nan] * len(dice), [math.nan] * len(dice)
    if not sparse:
        boxes = [ndimage.find_objects(a, max_label=num_classes - 1) for a in (pred, ref)]
        for c in range(1, num_classes):
            found = [b[c - 1] for b in boxes if b[c - 1] is not None]
            if not found:
                continue
            box = tuple(
                slice(min(s[a].start for s in found), max(s[a].stop for s in found))
                for a in range(pred.ndim)
            )
            s = surface_scores(pred[box] == c, ref[box] == c, spacing, tol[c - 1])
            hd[c - 1], nsd[c - 1] = s.hd95, s.nsd
    found = ()
    if regions:
        region_dice = set_dice(counts, [r.labels for r in regions]).tolist()
        found = _region_scores(pred, ref, regions, region_dice, spacing, tol, region_labels, sparse)
    return CaseScores(case_id, tuple(dice), tuple(hd), tuple(nsd), missing, regions=found)


def _region_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    regions: Sequence[Region],
    dice: Sequence[float],
    spacing: Sequence[float],
    tol: Sequence[float],
    region_labels: Sequence[int] | None,
    sparse: bool,
) -> tuple[tuple[str, float, float, float], ...]:
    """HD95 and NSD of each region's masks beside its Dice (NaN where the region is in
    neither map, or on a sparse case). The NSD tolerance of a region is that of the label
    value it writes (``region_labels``), else the first."""
    box = ndimage.find_objects(((pred > 0) | (ref > 0)).astype(np.uint8))
    out = []
    for i, (region, d) in enumerate(zip(regions, dice)):
        if math.isnan(d) or not box or sparse:
            out.append((region.name, d, math.nan, math.nan))
            continue
        p, r = np.isin(pred[box[0]], region.labels), np.isin(ref[box[0]], region.labels)
        label = region_labels[i] if region_labels else 1
        s = surface_scores(p, r, spacing, tol[min(label, len(tol)) - 1])
        out.append((region.name, d, s.hd95, s.nsd))
    return tuple(out)


def _dataset_labels(labels: Path) -> DatasetLabels | None:
    """The labels of the ``dataset.json`` beside a ``labelsTr``/``labelsTs`` folder (None
    without one).

    Raises:
        DataError: that dataset.json exists but cannot be read, or its labels are invalid:
            scoring without its ignore label or regions would score something else.
    """
    if not (labels.parent / "dataset.json").is_file():
        return None
    try:
        return read_labels(labels.parent)
    except DataError as err:
        raise DataError(
            f"labels={labels}: the dataset.json beside it says what the label values mean "
            f"(ignore label, regions) and cannot be used: {err}"
        ) from None


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


def _load_pair(pred_path: Path | None, ref_path: Path) -> tuple[np.ndarray, np.ndarray, tuple]:
    rv = read_nifti(ref_path, kind="label")
    pv = read_nifti(pred_path, kind="label") if pred_path is not None else None
    if pv is not None and (
        pv.data.shape != rv.data.shape or not np.allclose(pv.affine, rv.affine, atol=_AFFINE_ATOL)
    ):
        raise DataError(
            f"{pv.path}: grid {pv.data.shape} does not match reference {rv.path} "
            f"{rv.data.shape} (or their affines differ). Fix: compare predictions "
            "written for these very images."
        )
    for v in (pv, rv):
        with np.errstate(invalid="ignore"):  # inf or NaN: not an integer, refused here
            whole = v is None or bool(np.all(np.equal(np.mod(v.data, 1), 0)))
        if not whole:
            raise DataError(f"{v.path}: holds non-integer values; expected class indices.")
        if v is not None and v.data.min() < 0:
            raise DataError(f"{v.path}: holds negative values; expected class indices >= 0.")
        if v is not None and v.data.max() > _MAX_LABEL:
            raise DataError(
                f"{v.path}: holds the value {v.data.max()}; expected class indices up to "
                f"{_MAX_LABEL}. Fix: compare label maps (predictions and references), not images."
            )
    # the smallest integer type that holds both: a whole-body CT case stays 1 byte a voxel
    top = max(int(rv.data.max()), 0 if pv is None else int(pv.data.max()))
    kind = np.min_scalar_type(top)
    ref = rv.data.astype(kind)
    prd = np.zeros_like(ref) if pv is None else pv.data.astype(kind)
    return prd, ref, tuple(rv.spacing[:3])


def evaluate(
    *,
    pred: str | Path,
    labels: str | Path,
    num_classes: int | None = None,
    nsd_tolerance: float | Sequence[float] = DEFAULT_NSD_TOLERANCE,
    ignore_label: int | None = None,
    regions: Sequence[Region] | None = None,
    region_labels: Sequence[int] | None = None,
    progress: bool = False,
) -> list[CaseScores]:
    """Scores every reference case in ``labels`` against the prediction of the same name.

    A reference case without a prediction is scored as an empty prediction (Dice 0 and
    NSD 0 for every class in its reference, HD95 NaN) and flagged `CaseScores.missing`,
    so a partial prediction folder cannot raise the mean. Cases are read one at a time.

    Args:
        pred: folder of predicted label maps (``{case}.nii.gz``).
        labels: folder of reference label maps with the same names.
        num_classes: classes incl. background; default: largest value found + 1.
        nsd_tolerance: NSD tolerance in mm, one for all classes or one per foreground class.
        ignore_label: the label of unannotated reference voxels (see `score_case`); default:
            the ``ignore`` label of the ``dataset.json`` beside ``labels`` when there is one.
        regions: regions to score as well; default: those of the ``dataset.json`` beside
            ``labels`` (a region dataset), else none.
        region_labels: with ``regions``, the label value each writes (``regions_class_order``;
            a region's NSD tolerance is that value's); default: the first tolerance.

    Returns:
        One `CaseScores` per reference case, in name order, all with the same classes.

    Raises:
        DataError: a prediction without reference, grid mismatch, non-integer labels, a
            ``dataset.json`` beside ``labels`` that cannot be read or has invalid labels.
        ConfigError: a bad ``nsd_tolerance``.
    """
    preds = _by_case(Path(pred), "pred")
    refs = _by_case(Path(labels), "labels")
    unmatched = sorted(set(preds) - set(refs))
    if unmatched:
        raise DataError(
            f"labels={labels}: no reference for predicted case(s) {unmatched[:5]}. Fix: point "
            "labels= at the folder whose files have the same names (e.g. labelsTr/)."
        )
    nsd_tolerances(nsd_tolerance, 2)  # a bad value fails before any case is read
    meta = _dataset_labels(Path(labels))
    if ignore_label is None and meta is not None:
        ignore_label = meta.ignore_label
    if regions is None:
        regions = meta.regions if meta is not None else ()
        region_labels = meta.regions_class_order if regions else None
    items = sorted(refs.items())
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="cases", leave=False)
    scores = []
    for case_id, r in items:
        p = preds.get(case_id)
        prd, ref, spacing = _load_pair(p, r)
        # A class above this case's largest value is absent from both maps, so NaN: each
        # case is scored with its own classes and padded, and no case is held in memory.
        top = int(max(prd.max(), ref[ref != ignore_label].max(initial=0)))
        k = max(num_classes or 0, top + 1, 2)
        s = score_case(
            prd,
            ref,
            num_classes=k,
            spacing=spacing,
            nsd_tolerance=nsd_tolerance,
            case_id=case_id,
            missing=p is None,
            ignore_label=ignore_label,
            regions=regions,
            region_labels=region_labels,
        )
        scores.append(
            CaseScores(
                case_id,
                s.dice,
                s.hd95,
                s.nsd,
                s.missing,
                None if p is None else str(p),
                str(r),
                s.regions,
            )
        )
    k = max(num_classes or 0, *(len(s.dice) + 1 for s in scores))
    return [s.padded(k - 1) for s in scores]


def _means(rows: Sequence[Sequence[float]]) -> tuple[list[float], float]:
    per_class, mean = mean_dice(torch.tensor(rows, dtype=torch.float64))
    return per_class.tolist(), mean


def summary_rows(scores: Sequence[CaseScores]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per case, then ``mean``) with Dice, HD95 and NSD per class.

    A case's ``dice_mean`` is the mean over its classes; the ``mean`` row holds each
    class's mean over cases and, as ``dice_mean``, their mean over classes (NaN left
    out) — the number ``val/dice_mean`` reports during training.
    """
    scores = [s.padded(len(s.dice)) for s in scores]
    k = len(scores[0].dice)
    names = [r[0] for r in scores[0].regions]
    header = ["case", "status"]
    for name in ("dice", "hd95", "nsd"):
        header += [f"{name}_{c}" for c in range(1, k + 1)] + [f"{name}_mean"]
    if names:
        header += [f"dice_{n}" for n in names] + ["dice_regions_mean"]
    rows = []
    for s in scores:
        status = "no prediction (failure)" if s.missing else "ok"
        row: list[Any] = [s.case_id, status]
        for values in (s.dice, s.hd95, s.nsd):
            row += [*values, _means([values])[1]]
        if names:
            row += [*_region_metric(s, 1), _means([_region_metric(s, 1)])[1]]
        rows.append(row)
    missing = sum(s.missing for s in scores)
    status = f"{len(scores)} cases" + (f", {missing} without prediction" if missing else "")
    row = ["mean", status]
    for name in ("dice", "hd95", "nsd"):
        per_class, mean = _means([getattr(s, name) for s in scores])
        row += [*per_class, mean]
    if names:
        per_region, mean = _means([_region_metric(s, 1) for s in scores])
        row += [*per_region, mean]
    rows.append(row)
    return header, [[r[0], r[1], *(f"{v:.4f}" for v in r[2:])] for r in rows]


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _region_metric(s: CaseScores, i: int) -> list[float]:
    """One metric (1 Dice, 2 HD95, 3 NSD) of every region of a case."""
    return [r[i] for r in s.regions]


def _region_summary(scores: Sequence[CaseScores]) -> dict[str, Any]:
    """The region entries of ``summary.json`` (empty without regions)."""
    names = [r[0] for r in scores[0].regions]
    if not names:
        return {}
    means = {m: _means([_region_metric(s, i) for s in scores]) for i, m in enumerate(_METRICS, 1)}
    return {
        "region_mean": {
            name: {m: _json_number(means[m][0][i]) for m in _METRICS}
            for i, name in enumerate(names)
        },
        "region_foreground_mean": {m: _json_number(means[m][1]) for m in _METRICS},
    }


def summary(
    scores: Sequence[CaseScores], *, nsd_tolerance: float | Sequence[float]
) -> dict[str, Any]:
    """nnU-Net's ``summary.json`` layout with Dice, HD95 (mm) and NSD per case and label.

    ``metric_per_case``: one entry per case (``prediction_file``, ``reference_file``,
    ``metrics`` per label); ``mean``: per label, each metric's mean over cases;
    ``foreground_mean``: per metric, the mean of ``mean`` over labels. NaN (a class in
    neither map; HD95 where a map is empty) is ``null`` and left out of every mean —
    nnU-Net's ``foreground_mean`` instead becomes NaN when one label is NaN.
    """
    scores = [s.padded(len(s.dice)) for s in scores]
    labels = [str(c) for c in range(1, len(scores[0].dice) + 1)]
    tol = nsd_tolerances(nsd_tolerance, len(labels) + 1)

    def table(s: CaseScores) -> list[list[float]]:
        return [s.dice, s.hd95, s.nsd]

    per_case = []
    for s in scores:
        metrics = {
            label: {m: _json_number(v[i]) for m, v in zip(_METRICS, table(s))}
            for i, label in enumerate(labels)
        }
        entry = {
            "case": s.case_id,
            "status": "no prediction (failure)" if s.missing else "ok",
            "prediction_file": s.prediction_file,
            "reference_file": s.reference_file,
            "metrics": metrics,
        }
        if s.regions:
            entry["region_metrics"] = {
                r[0]: {m: _json_number(v) for m, v in zip(_METRICS, r[1:])} for r in s.regions
            }
        per_case.append(entry)
    means = {m: _means([table(s)[i] for s in scores]) for i, m in enumerate(_METRICS)}
    return {
        "metric_per_case": per_case,
        "mean": {
            label: {m: _json_number(means[m][0][i]) for m in _METRICS}
            for i, label in enumerate(labels)
        },
        "foreground_mean": {m: _json_number(means[m][1]) for m in _METRICS},
        **_region_summary(scores),
        "num_cases": len(scores),
        "cases_without_prediction": [s.case_id for s in scores if s.missing],
        "nsd_tolerance_mm": dict(zip(labels, tol)),
        "conventions": {
            "Dice": "2|P and R|/(|P|+|R|); null where the label is in neither map",
            "HD95": "mm; the larger directed 95th percentile of voxel-surface distances "
            "(MONAI compute_hausdorff_distance); null where a map lacks the label",
            "NSD": "normalised surface Dice at nsd_tolerance_mm, area-weighted surface "
            "elements (DeepMind surface-distance; MONAI use_subvoxels=True); 0 where "
            "only one map has the label, null where neither has it",
            "mean": "per label over cases, then over labels; nulls left out",
            "regions": "region datasets: both label maps turned into region masks "
            "(dataset.json labels mapped to lists of values), scored like labels",
        },
    }


def write_summary(
    path: str | Path, scores: Sequence[CaseScores], *, nsd_tolerance: float | Sequence[float]
) -> Path:
    """Writes `summary` as JSON atomically (a crash never leaves half a file)."""
    path = Path(path)
    save_json_atomic(path, summary(scores, nsd_tolerance=nsd_tolerance))
    return path


def describe_missing(scores: Sequence[CaseScores]) -> str:
    """One line naming the reference cases without a prediction ("" if there are none)."""
    missing = [s.case_id for s in scores if s.missing]
    if not missing:
        return ""
    return (
        f"{len(missing)} of {len(scores)} reference case(s) have no prediction: "
        f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; counted as failures "
        "(Dice 0 and NSD 0 for every class in their reference, HD95 undefined and left out)."
    )


def write_csv(path: str | Path, header: list[str], rows: list[list[str]]) -> Path:
    """Writes the table atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path
