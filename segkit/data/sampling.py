"""Patch sampling from the memory-mapped cache.

Patches are drawn by index: the random state of sample ``i`` is seeded by
``(seed, i)``, and `EpochSampler` hands out fresh indices each epoch. A batch
is therefore identical for any number of workers, persistent or not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segkit.data.cache import open_case
from segkit.defaults import SLICE_AXIS
from segkit.errors import ConfigError

_MAX_OPEN_CASES = 128  # each memmap holds a file descriptor
_ANNOTATED_TRIES = 10  # redraws of a random patch that holds only ignored voxels


def _check_patch_size(patch_size: Sequence[int]) -> tuple[int, ...]:
    try:
        patch = tuple(int(p) for p in patch_size)
    except (TypeError, ValueError):
        patch = ()
    if len(patch) not in (2, 3) or min(patch) < 1:
        raise ConfigError(
            f"data.patch_size={patch_size}: expected 2 or 3 positive integers, "
            "e.g. [64, 64, 48] for 3D or [192, 160] for 2D slices."
        )
    return patch


class _CaseCache:
    """Per-process LRU of memory-mapped cases (dropped when pickled to workers).

    Each entry is ``(image, label, fg_by_class)`` where ``fg_by_class`` maps a
    foreground class present in the case to its rows of voxel positions.
    """

    def __init__(self, cases_dir: Path) -> None:
        self.cases_dir = Path(cases_dir)
        self._open: dict[str, tuple] = {}

    def get(self, case_id: str) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        if case_id not in self._open:
            if len(self._open) >= _MAX_OPEN_CASES:
                self._open.pop(next(iter(self._open)))
            image, label, fg = open_case(self.cases_dir, case_id)
            classes, starts = np.unique(fg[:, 0], return_index=True)
            bounds = [*starts.tolist(), len(fg)]
            # Rows are stored grouped by class (see cache._process_case).
            by_class = {int(c): fg[bounds[i] : bounds[i + 1], 1:] for i, c in enumerate(classes)}
            self._open[case_id] = (image, label, by_class)
        return self._open[case_id]

    def __getstate__(self) -> dict[str, Any]:
        return {"cases_dir": self.cases_dir, "_open": {}}


class PatchDataset(Dataset):
    """Random patches from preprocessed cases, with foreground oversampling.

    Args:
        cases_dir: The cache's ``cases`` folder.
        case_ids: Cases to draw from (uniformly).
        patch_size: 3 ints (3D patches) or 2 ints (2D slices through the volume).
        num_samples: Samples per epoch (``len(self)``).
        oversample_foreground: Probability that a patch is centred on a random
            foreground voxel of a random foreground class present in the case.
        seed: Base seed; sample ``i`` uses ``np.random.default_rng((seed, i))``.
        slice_axis: For 2D patches, the volume axis the slices are taken across.
        ignore_label: Label value of unannotated voxels (None: none). They are never
            foreground for oversampling, and a random patch holding no annotated voxel
            is redrawn (up to `_ANNOTATED_TRIES` times) so that batches carry a signal.
        regions: For region training, the label values of each region (dataset.json);
            a foreground patch is then centred on a random voxel of a random region
            present in the case (nnU-Net's region sampling), so every region, the small
            inner ones included, gets its share; None: a random foreground class.
    """

    def __init__(
        self,
        *,
        cases_dir: Path,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        num_samples: int,
        oversample_foreground: float = 0.33,
        seed: int = 0,
        slice_axis: int = SLICE_AXIS,
        ignore_label: int | None = None,
        regions: Sequence[Sequence[int]] | None = None,
    ) -> None:
        if not case_ids:
            raise ConfigError("PatchDataset needs at least one case; the training split is empty.")
        if not 0.0 <= oversample_foreground <= 1.0:
            raise ConfigError(
                f"data.oversample_foreground={oversample_foreground}: expected a "
                "probability in [0, 1]."
            )
        self.patch_size = _check_patch_size(patch_size)
        self.case_ids = tuple(case_ids)
        self.num_samples = int(num_samples)
        self.oversample_foreground = float(oversample_foreground)
        self.seed = int(seed)
        self.slice_axis = int(slice_axis)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.regions = tuple(tuple(int(v) for v in r) for r in regions or ())
        self._cases = _CaseCache(cases_dir)

    def __len__(self) -> int:
        return self.num_samples

    def _patch3d(self) -> tuple[int, ...]:
        if len(self.patch_size) == 3:
            return self.patch_size
        patch = list(self.patch_size)
        patch.insert(self.slice_axis, 1)
        return tuple(patch)

    def sample_patch(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Draws patch number `index`.

        Returns:
            ``(image (C, *P) float32, label (*P) in the cache's integer type (uint8 up
            to 256 classes), info)`` where info has
            ``case``, ``forced_foreground`` and ``lower`` (patch corner, may be
            negative when the case is padded).
        """
        rng = np.random.default_rng((self.seed, int(index)))
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        forced = bool(rng.random() < self.oversample_foreground)
        image, label, fg = self._cases.get(case_id)
        shape = np.array(label.shape)
        patch = np.array(self._patch3d())
        low, high = np.minimum(0, shape - patch), np.maximum(0, shape - patch)
        classes = [c for c in fg if c != self.ignore_label]  # annotated foreground only
        if forced and classes:
            rows = fg[self._foreground_value(rng, classes, fg)]
            centre = rows[int(rng.integers(len(rows)))]
            lower = np.clip(centre - patch // 2, low, high)
        else:
            lower = rng.integers(low, high + 1)
            for _ in range(_ANNOTATED_TRIES if self.ignore_label is not None else 0):
                lo, hi = np.maximum(lower, 0), np.minimum(lower + patch, shape)
                window = label[tuple(slice(a, b) for a, b in zip(lo, hi))]
                # a padded margin is background, which counts as annotated
                if (hi - lo < patch).any() or (window != self.ignore_label).any():
                    break
                lower = rng.integers(low, high + 1)
        src_lo, src_hi = np.maximum(lower, 0), np.minimum(lower + patch, shape)
        src = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
        if (src_hi - src_lo == patch).all():  # no padding needed: skip zero-filling
            out_img = np.array(image[(slice(None), *src)], dtype=np.float32)
            # labels stay in the cache's small type (uint8): 8× fewer bytes to copy,
            # collate and move to the device than int64; the loss takes any integer type
            out_lab = np.array(label[src])
        else:
            dst = tuple(slice(a, b) for a, b in zip(src_lo - lower, src_hi - lower))
            out_img = np.zeros((image.shape[0], *patch), dtype=np.float32)
            out_lab = np.zeros(tuple(patch), dtype=label.dtype)

            out_img[(slice(None), *dst)] = image[(slice(None), *src)]
            out_lab[dst] = label[src]
        if len(self.patch_size) == 2:
            out_img = out_img.squeeze(1 + self.slice_axis)
            out_lab = out_lab.squeeze(self.slice_axis)
        info = {"case": case_id, "forced_foreground": forced, "lower": lower.tolist()}
        return out_img, out_lab, info

    def _foreground_value(
        self, rng: np.random.Generator, classes: list[int], fg: dict[int, np.ndarray]
    ) -> int:
        """The label value whose voxels a foreground patch is centred on."""
        present = [[v for v in r if v in fg] for r in self.regions]
        present = [r for r in present if r]
        if not present:
            return int(rng.choice(classes))
        values = present[int(rng.integers(len(present)))]
        # a value in proportion to its voxels: uniform over the region's voxels
        sizes = np.array([len(fg[v]) for v in values], dtype=np.float64)
        return int(values[int(rng.choice(len(values), p=sizes / sizes.sum()))])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label, _ = self.sample_patch(index)
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)[None]}


class EpochSampler(Sampler[int]):
    """Yields ``num_samples`` fresh indices per epoch: epoch e gets ``[e*n, (e+1)*n)``.

    Lightning calls `set_epoch` before each epoch (so resuming reproduces the
    stream); without it the epoch counter advances on every iteration.
    """

    def __init__(self, num_samples: int) -> None:
        self.num_samples = int(num_samples)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose indices the next iteration yields."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.num_samples
        self.epoch += 1
        return iter(range(start, start + self.num_samples))

    def __len__(self) -> int:
        return self.num_samples


class CaseDataset(Dataset):
    """Whole preprocessed cases (for validation), one per item.

    Items: ``{"image": (C, *S) float32, "label": (1, *S) int64, "case": id}``.
    """

    def __init__(self, *, cases_dir: Path, case_ids: Sequence[str]) -> None:
        self.case_ids = tuple(case_ids)
        self._cases = _CaseCache(cases_dir)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id = self.case_ids[index]
        image, label, _ = self._cases.get(case_id)
        return {
            "image": torch.from_numpy(np.array(image, dtype=np.float32)),
            "label": torch.from_numpy(np.array(label, dtype=np.int64))[None],
            "case": case_id,
        }
