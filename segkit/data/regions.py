"""Region-based labels (nnU-Net v2's format, BraTS): parsing, checks and conversions.

In ``dataset.json`` a label mapped to a *list* of label values is a region, e.g.
``"labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
"enhancing_tumor": [3]}`` with ``"regions_class_order": [1, 2, 3]``. The network has one
sigmoid output per region, in the order the regions are listed; a label map is written
back region by region, ``regions_class_order[i]`` wherever region ``i`` is predicted,
later regions overwriting earlier ones (:class:`segkit.inference.engine.outputs.OutputHead`).

That label map is faithful (turning it into region masks gives back the masks it was
written from, and a reference label map survives the round trip unchanged) exactly when
the checks of :func:`parse_regions` hold: the regions' values are ``1..K`` without gaps
(the label files' classes), a later region lies inside every earlier one it overlaps,
and each value is written by the last region that holds it.

Scores: a region's Dice counts its masks, which are unions of label values, so it is
read off the label-value confusion counts, as a class's is (:mod:`segkit.inference.metrics.dice`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.errors import DataError

ORDER_KEY = "regions_class_order"


@dataclass(frozen=True)
class Region:
    """One region: its name and the label values it unites (e.g. whole tumour: 1, 2, 3)."""

    name: str
    labels: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Region:
        return cls(str(value["name"]), tuple(int(v) for v in value["labels"]))


def has_regions(labels: Any) -> bool:
    """Whether a parsed ``labels`` object declares regions (a value that is a list)."""
    return isinstance(labels, dict) and any(isinstance(v, list) for v in labels.values())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _region(name: str, value: Any, *, path: Path) -> Region:
    values = [value] if _is_int(value) else value
    shown = f"'labels' \"{name}\": {value!r}"
    if not isinstance(values, list) or not values or not all(_is_int(v) for v in values):
        raise DataError(
            f"{path}: {shown}: a region is a non-empty list of integer label values. "
            f'Fix: write e.g. "{name}": [2, 3].'
        )
    if len(set(values)) != len(values):
        raise DataError(f"{path}: {shown} lists a value twice. Fix: list each value once.")
    if min(values) < 1:
        raise DataError(
            f"{path}: {shown} holds {min(values)}; regions are made of foreground label "
            "values (>= 1; 0 is the background). Fix: remove it from the region."
        )
    return Region(str(name), tuple(sorted(values)))


def parse_regions(
    meta: dict[str, Any], *, path: Path
) -> tuple[tuple[Region, ...], tuple[int, ...], dict[int, str]]:
    """Reads and checks the regions of an nnU-Net v2 ``dataset.json``.

    Args:
        meta: the parsed dataset.json (its ``labels`` declare at least one list).
        path: the file, for messages.

    Returns:
        ``(regions in channel order, regions_class_order, label names)`` where the label
        names map each label value 0..K to the region that writes it (0: background).

    Raises:
        DataError: an ignore label, no background 0, a malformed region, missing or
            mismatched ``regions_class_order``, a value absent from the label files'
            classes (a gap in 1..K), regions that do not nest in the given order, or a
            label value that the order would never write.
    """
    labels: dict[str, Any] = meta["labels"]
    ignore = [k for k in labels if str(k).strip().lower() == "ignore"]
    if ignore:
        raise DataError(
            f"{path}: 'labels' \"{ignore[0]}\": an ignore label is not supported with "
            "regions (labels mapped to lists): a region's sigmoid has no 'unannotated' "
            "state segkit could leave out. Fix: remove 'ignore' and annotate those voxels, "
            "or train the label values as plain classes (one integer per label, no regions)."
        )
    background = [k for k, v in labels.items() if _is_int(v) and v == 0]
    if not background:
        raise DataError(
            f"{path}: 'labels' has regions but no background 0. Fix: add "
            '"background": 0 (regions unite the foreground values 1..K).'
        )
    regions = tuple(_region(str(k), v, path=path) for k, v in labels.items() if k != background[0])
    order = _order(meta.get(ORDER_KEY), regions, path=path)
    values = sorted({v for r in regions for v in r.labels})
    top = values[-1]
    # the first missing values only: a value such as 2**40 must not build a range to it
    gaps = [v for v in range(1, min(top, len(values) + 3) + 1) if v not in set(values)]
    if gaps:
        culprit = next(r for r in regions if top in r.labels)
        raise DataError(
            f"{path}: 'labels' \"{culprit.name}\": {list(culprit.labels)} names label value "
            f"{top}, which is not a class of the label files: their classes are the values "
            f"0..K without gaps (nnU-Net v2), and no region holds {gaps}. Fix: renumber the "
            f"label values so the regions use 1..{len(values)} (and relabel the label files), "
            "or correct the region."
        )
    _check_nesting(regions, path=path)
    _check_order(regions, order, top, path=path)
    names = {0: str(background[0])}
    names.update({value: r.name for r, value in zip(regions, order)})
    return regions, order, dict(sorted(names.items()))


def _order(value: Any, regions: Sequence[Region], *, path: Path) -> tuple[int, ...]:
    listing = ", ".join(f"{r.name} {list(r.labels)}" for r in regions)
    if value is None:
        raise DataError(
            f"{path}: '{ORDER_KEY}' is missing; it is required with regions (labels mapped "
            f"to lists: {listing}): the label value each region writes into the predicted "
            f'label map, in region order. Fix: add e.g. "{ORDER_KEY}": '
            f"{[max(r.labels) for r in regions]}."
        )
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise DataError(
            f"{path}: '{ORDER_KEY}' must be a list of integer label values, got {value!r}."
        )
    if len(value) != len(regions):
        raise DataError(
            f"{path}: '{ORDER_KEY}' has {len(value)} entries for {len(regions)} regions "
            f"({listing}); one label value per region, in the order 'labels' lists them. "
            f"Fix: give {len(regions)} values."
        )
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:
        raise DataError(
            f"{path}: '{ORDER_KEY}' {value} writes the value {twice[0]} for two regions. "
            "Fix: one distinct label value per region."
        )
    return tuple(int(v) for v in value)


def _check_nesting(regions: Sequence[Region], *, path: Path) -> None:
    for j, later in enumerate(regions):
        for earlier in regions[:j]:
            inner, outer = set(later.labels), set(earlier.labels)
            if inner & outer and not inner <= outer:
                raise DataError(
                    f"{path}: 'labels' regions \"{earlier.name}\": {list(earlier.labels)} and "
                    f'"{later.name}": {list(later.labels)} overlap without nesting: the later '
                    "region overwrites the earlier one in the predicted label map, so it must "
                    f"lie inside it (it also holds {sorted(inner - outer)}). Fix: list the "
                    "regions from the outermost to the innermost, each overlapping region "
                    "inside the ones before it (BraTS: whole tumour, tumour core, enhancing)."
                )


def _check_order(regions: Sequence[Region], order: Sequence[int], top: int, *, path: Path) -> None:
    for j, (region, value) in enumerate(zip(regions, order)):
        if value not in region.labels:
            raise DataError(
                f"{path}: '{ORDER_KEY}'[{j}] = {value} is not a value of region "
                f'"{region.name}" {list(region.labels)}: voxels predicted in that region '
                f"would get a label outside it. Fix: use one of {list(region.labels)}."
            )
        later = [r for r in regions[j + 1 :] if value in r.labels]
        if later:
            raise DataError(
                f"{path}: '{ORDER_KEY}'[{j}] = {value}: region \"{region.name}\" writes "
                f'{value}, but the later region "{later[0].name}" {list(later[0].labels)} '
                f"also holds {value} and overwrites it, so predictions could never contain "
                f'{value}. Fix: give "{region.name}" a value no later region holds '
                f"({sorted(set(region.labels) - {v for r in regions[j + 1 :] for v in r.labels})})."
            )
    unwritten = sorted(set(range(1, top + 1)) - set(order))
    if unwritten:
        raise DataError(
            f"{path}: '{ORDER_KEY}' {list(order)} never writes label value(s) {unwritten}: "
            "predicted label maps could not contain them, though the label files do. Fix: "
            "make each label value the one written by the last region that holds it."
        )


def region_table(regions: Sequence[Region], num_values: int) -> np.ndarray:
    """(R, num_values) bool: ``table[i, v]`` is whether label value ``v`` is in region i."""
    table = np.zeros((len(regions), num_values), dtype=bool)
    for i, r in enumerate(regions):
        table[i, [v for v in r.labels if v < num_values]] = True
    return table


def region_masks(label: Any, regions: Sequence[Region]) -> Any:
    """Label map (*S) → region masks (R, *S), bool; numpy in, numpy out; torch in, torch out.

    Values above every region's are in no region (background for all of them).
    """
    if isinstance(label, torch.Tensor):
        label = label.long()
        top = int(label.max()) if label.numel() else 0
        table = torch.from_numpy(region_table(regions, top + 1)).to(label.device)
        return table[:, label]
    label = np.asarray(label)
    top = int(label.max()) if label.size else 0
    return region_table(regions, top + 1)[:, label.astype(np.intp, copy=False)]


def describe_outputs(regions: Sequence[Region], order: Sequence[int]) -> str:
    """One line for the plan table and ``segkit configure``."""
    names = ", ".join(r.name for r in regions)
    return (
        f"outputs: {len(regions)} sigmoid regions ({names}); label map by {ORDER_KEY} {list(order)}"
    )
