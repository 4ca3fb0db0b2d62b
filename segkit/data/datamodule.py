"""Lightning DataModule: cached preprocessing, k-fold split, patches, augmentation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segkit.config import path_value
from segkit.data.augment import BatchAugment
from segkit.data.cache import PreprocessedDataset, preprocess_dataset
from segkit.data.demo import make_demo
from segkit.data.io import read_nifti
from segkit.data.layouts import DatasetInfo, read_dataset_info
from segkit.data.preprocess import Preprocessor
from segkit.data.sampling import CaseDataset, EpochSampler, PatchDataset, _check_patch_size
from segkit.errors import ConfigError, DataError
from segkit.fsio import file_lock, read_json, save_json_atomic

_SPLIT_SEED = 12345  # fixed so that changing the training seed keeps the folds


def _plain(value: Any) -> Any:
    """Converts OmegaConf containers (or any mapping/sequence) to plain Python."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _number(key: str, value: Any, kind: type = int) -> Any:
    """``data.KEY``'s value as an int (or float); any other value is refused by its key."""
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"data.{key}={value!r}: expected {'an integer' if kind is int else 'a number'}."
        ) from None


def make_splits(case_ids: Sequence[str], *, num_folds: int, seed: int = _SPLIT_SEED) -> list:
    """K-fold split: a list of ``{"train": [...], "val": [...]}`` per fold."""
    ids = sorted(case_ids)
    if num_folds < 2 or num_folds > len(ids):
        raise ConfigError(
            f"data.num_folds={num_folds} with {len(ids)} training cases: need "
            f"2 <= num_folds <= {len(ids)}. Fix: lower data.num_folds."
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, num_folds)
    return [
        {
            "train": sorted(ids[i] for j, f in enumerate(folds) if j != k for i in f),
            "val": sorted(ids[i] for i in fold),
        }
        for k, fold in enumerate(folds)
    ]


def _split_error(path: Path, problem: str, num_folds: int) -> DataError:
    return DataError(
        f"{path}: {problem} Fix: correct the file, or delete it and segkit makes a new "
        f"{num_folds}-fold split (data.num_folds) there."
    )


def load_or_make_splits(
    path: Path, case_ids: Sequence[str], *, num_folds: int
) -> list[dict[str, list[str]]]:
    """The cross-validation folds of `path`; made and saved when it does not exist.

    A file someone wrote (an edited split, nnU-Net's ``splits_final.json``) is used as it
    is, never overwritten: it must be a list of ``{"train": [...], "val": [...]}`` naming
    only training cases, with ``num_folds`` folds. Only segkit's own split for another
    fold count is replaced (it is reproducible, so nothing chosen by hand is lost).

    Raises:
        DataError: The file is not valid JSON, has the wrong structure, names unknown
            cases, puts a case in both train and val, or has another number of folds.
    """
    ids = sorted(case_ids)
    if not path.is_file():
        splits = make_splits(ids, num_folds=num_folds)
        save_json_atomic(path, splits)
        return splits
    try:
        splits = read_json(path)
    except ValueError as err:
        raise _split_error(path, f"is not valid JSON ({err}).", num_folds) from err
    if not isinstance(splits, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("train"), list)
        and isinstance(f.get("val"), list)
        and all(isinstance(c, str) for c in (*f["train"], *f["val"]))
        for f in splits
    ):
        raise _split_error(
            path,
            'must be a list of folds {"train": [case ids], "val": [case ids]}.',
            num_folds,
        )
    if len(splits) != num_folds:
        # segkit's own split for another fold count (one it could have made) is replaced
        if 2 <= len(splits) <= len(ids) and splits == make_splits(ids, num_folds=len(splits)):
            splits = make_splits(ids, num_folds=num_folds)
            save_json_atomic(path, splits)
            return splits
        raise DataError(
            f"{path}: holds {len(splits)} folds that were edited by hand (or come from "
            f"nnU-Net), but data.num_folds={num_folds}; segkit does not overwrite a split "
            f"someone made. Fix: set data.num_folds={len(splits)} to use it, or delete the "
            f"file to make a new {num_folds}-fold split."
        )
    unknown = sorted({c for f in splits for c in (*f["train"], *f["val"])} - set(ids))
    if unknown:
        raise _split_error(
            path,
            f"names case(s) {unknown[:5]} that are not training cases of this dataset.",
            num_folds,
        )
    for k, fold in enumerate(splits):
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both or not fold["val"] or not fold["train"]:
            problem = f"puts {both[:5]} in both train and val" if both else "has an empty list"
            raise _split_error(path, f"fold {k} {problem}.", num_folds)
    return splits


class SegDataModule(pl.LightningDataModule):
    """Training/validation data for a Decathlon or nnU-Net v2 dataset.

    Args:
        root: Dataset directory (holding dataset.json).
        patch_size: Training patch, 3 ints (3D) or 2 ints (2D slices).
        batch_size: Patches per training batch.
        num_workers: DataLoader workers and preprocessing processes.
        fold: Cross-validation fold used for validation.
        num_folds: Number of folds.
        samples_per_epoch: Patches per epoch (default ``250 * batch_size``).
        oversample_foreground: Fraction of patches centred on foreground.
        target_spacing: Resampling spacing in mm (RAS); None = dataset median.
        normalization: ``auto``, ``zscore``, ``ct``, ``none`` or one per channel.
        cache_dir: Base directory of the cache (default ``<root>/segkit_cache``).
        make_demo_if_missing: Generate the synthetic demo at `root` if absent; a path
            means "only when `root` is this path", so pointing `data.root` at a real
            dataset never writes synthetic data into it.
        demo: Keyword arguments of `make_demo` for `make_demo_if_missing` (e.g.
            ``{"regions": true}`` for the BraTS-like region demo).
        augment: Keyword arguments of `BatchAugment`; None disables augmentation.
        seed: Seed of patch sampling.
        val_max_cases: Validate on at most this many cases of the fold.
    """

    def __init__(
        self,
        *,
        root: str | Path = "data/demo",
        patch_size: Sequence[int] = (64, 64, 32),
        batch_size: int = 2,
        num_workers: int = 2,
        fold: int = 0,
        num_folds: int = 5,
        samples_per_epoch: int | None = None,
        oversample_foreground: float = 0.33,
        target_spacing: Sequence[float] | None = None,
        normalization: str | Sequence[str] = "auto",
        cache_dir: str | Path | None = None,
        make_demo_if_missing: bool | str | Path = False,
        demo: Mapping[str, Any] | None = None,
        augment: Mapping[str, Any] | None = None,
        seed: int = 0,
        val_max_cases: int | None = None,
    ) -> None:
        super().__init__()
        self.root = path_value("data.root", root)
        self.patch_size = _check_patch_size(_plain(patch_size))
        if _number("batch_size", batch_size) < 1:
            raise ConfigError(f"data.batch_size={batch_size}: must be >= 1.")
        self.batch_size = int(batch_size)
        self.num_workers = max(0, _number("num_workers", num_workers))
        self.fold, self.num_folds = _number("fold", fold), _number("num_folds", num_folds)
        if not 0 <= self.fold < self.num_folds:
            raise ConfigError(
                f"data.fold={fold} is outside 0..{self.num_folds - 1} (data.num_folds={num_folds})."
            )
        self.samples_per_epoch = _number(
            "samples_per_epoch", samples_per_epoch or 250 * self.batch_size
        )
        self.oversample_foreground = _number("oversample_foreground", oversample_foreground, float)
        self.target_spacing = None if target_spacing is None else _plain(target_spacing)
        self.normalization = _plain(normalization)
        if not isinstance(self.normalization, str | list):
            raise ConfigError(
                f"data.normalization={normalization!r}: expected auto, zscore, ct, none or one "
                "per channel. Fix: data.normalization=auto"
            )
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if isinstance(make_demo_if_missing, str | Path):
            make_demo_if_missing = Path(make_demo_if_missing).resolve() == self.root.resolve()
        self.make_demo_if_missing = bool(make_demo_if_missing)
        self.demo_options = dict(_plain(demo or {}))
        self.augment_kwargs = None if augment is None else _plain(augment)
        self.augment = None if augment is None else BatchAugment(**self.augment_kwargs)
        self.seed = _number("seed", seed)
        self.val_max_cases = val_max_cases
        self._prepared: PreprocessedDataset | None = None
        self._preprocessor: Preprocessor | None = None
        self.train_ids: list[str] = []
        self.val_ids: list[str] = []

    def _ensure_root(self) -> None:
        if self.make_demo_if_missing and not (self.root / "dataset.json").is_file():
            make_demo(self.root, **self.demo_options)

    def dataset_info(self) -> DatasetInfo:
        """Channels/classes/labels from dataset.json (creates the demo if configured)."""
        self._ensure_root()
        return read_dataset_info(self.root)

    def _preprocess(self) -> PreprocessedDataset:
        self._ensure_root()
        if self.target_spacing is not None and len(self.target_spacing) != 3:
            raise ConfigError(
                f"data.target_spacing={self.target_spacing}: expected 3 numbers (mm, RAS order)."
            )
        return preprocess_dataset(
            self.root,
            cache_dir=self.cache_dir,
            target_spacing=self.target_spacing,
            normalization=self.normalization,
            num_workers=self.num_workers,
        )

    def prepare_data(self) -> None:
        """Preprocesses the dataset into the cache (skips finished cases)."""
        self._prepared = self._preprocess()
        self._preprocessor = self._prepared.preprocessor

    @property
    def preprocessor(self) -> Preprocessor:
        """The resolved preprocessing (available after `prepare_data`/`setup`)."""
        if self._preprocessor is None:
            raise DataError(
                f"The preprocessor of {self.root} is not known yet. Fix: call "
                "prepare_data() (Lightning does this before fitting)."
            )
        return self._preprocessor

    @property
    def cache_path(self) -> Path:
        """The settings-specific cache directory (after `setup`)."""
        if self._prepared is None:
            raise DataError("The cache is not ready. Fix: call prepare_data() and setup().")
        return self._prepared.cache_dir

    def setup(self, stage: str | None = None) -> None:
        """Loads the cache and the train/val split of `fold` (saved as splits.json)."""
        if self._prepared is None:
            # Other ranks (DDP) find rank 0's finished cache; nothing is recomputed.
            self._prepared = self._preprocess()
            self._preprocessor = self._prepared.preprocessor
        path = self._prepared.cache_dir / "splits.json"
        # under the cache's lock: a process filling the cache removes temporaries it finds
        # there as a dead run's, so writing splits.json beside it must wait for it
        with file_lock(
            self._prepared.cache_dir / ".lock",
            waiting="waiting for another process filling the cache to write splits.json",
        ):
            splits = load_or_make_splits(path, self._prepared.case_ids, num_folds=self.num_folds)
        self.train_ids = list(splits[self.fold]["train"])
        self.val_ids = list(splits[self.fold]["val"])[: self.val_max_cases]

    @property
    def slice_axis(self) -> int:
        """Volume axis that 2D patches slice across: the coarsest (last on ties).

        Validation cases stay 3D; a 2D model is applied slice by slice across it.
        """
        spacing = np.asarray(self.preprocessor.target_spacing)
        return int(np.flatnonzero(spacing == spacing.max())[-1])

    def train_dataloader(self) -> DataLoader:
        """Random patches: ``{"image": (B, C, *P) float32, "label": (B, 1, *P) uint8}``.

        Labels keep the cache's integer type (int16 above 256 classes).
        """
        info = self.dataset_info()
        dataset = PatchDataset(
            cases_dir=self._prepared.cases_dir,
            case_ids=self.train_ids,
            patch_size=self.patch_size,
            num_samples=self.samples_per_epoch,
            oversample_foreground=self.oversample_foreground,
            seed=self.seed,
            slice_axis=self.slice_axis,
            ignore_label=info.ignore_label,
            regions=[r.labels for r in info.regions] or None,
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(self.samples_per_epoch),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        """Whole cases: ``{"image": (1, C, *S), "label": (1, 1, *S), "case": [id]}``."""
        dataset = CaseDataset(cases_dir=self._prepared.cases_dir, case_ids=self.val_ids)
        return DataLoader(
            dataset,
            batch_size=1,
            shuffle=False,
            num_workers=min(self.num_workers, 1),
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def original_grid(self, case_id: str) -> tuple[Preprocessor, dict[str, Any], np.ndarray] | None:
        """What scoring a validation case on its original voxel grid needs, when that differs.

        Returns ``(preprocessor, props, original label)`` for a case whose preprocessing
        resampled it, so a prediction can be mapped back exactly as ``segkit predict``
        writes it and scored as ``segkit evaluate`` does; None where the preprocessed grid
        holds the original voxels (only reoriented and cropped), which scores the same.
        """
        from segkit.data.cache import load_props
        from segkit.data.preprocess import _squeeze_trailing, validate_labels

        props = load_props(self._prepared.cases_dir, case_id)
        if list(props["resampled_shape"]) == list(props["shape_after_crop"]):
            return None
        label_path = Path(props["label_path"])
        volume = read_nifti(label_path, kind="label")
        label = validate_labels(
            _squeeze_trailing(volume.data, 3),
            num_classes=self.preprocessor.num_classes,
            path=label_path,
        )
        return self.preprocessor, props, label

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Applies `BatchAugment` on the device, during training only."""
        trainer = self.trainer
        if self.augment is not None and trainer is not None and trainer.training:
            batch["image"], batch["label"] = self.augment(batch["image"], batch["label"])
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Stores the preprocessor in Lightning checkpoints."""
        return {} if self._preprocessor is None else {"preprocessor": self.preprocessor.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the preprocessor from a checkpoint."""
        if "preprocessor" in state_dict:
            self._preprocessor = Preprocessor.from_dict(state_dict["preprocessor"])
