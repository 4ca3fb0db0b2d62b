"""The on-disk preprocessing cache.

Cache layout (one directory per dataset + settings)::

    <cache_base>/fingerprint-<digest>.json   the dataset's fingerprint (segkit.data.fingerprint)
    <cache_base>/<settings hash>/
        settings.json       requested settings + dataset.json digest
        fingerprint.json    the spacings and intensity statistics these settings used
        preprocessor.json   resolved Preprocessor.to_dict()
        splits.json         cross-validation folds (written by the DataModule)
        cases/<id>_image.npy  float32 (C, *S), read with mmap
        cases/<id>_label.npy  uint8/int16 (*S)
        cases/<id>_fg.npy     int32 (N, 4): class, then voxel index, subsampled
        cases/<id>.json       props; written last, so it marks the case as done

Every file is written to a temporary sibling and renamed; a case whose JSON is
missing is (re)done on the next run, so a crash never leaves a corrupt array
that is later read. One process at a time fills a cache directory: it holds an
exclusive lock on ``<settings hash>/.lock`` (``flock``, released by the kernel
if the process dies), so temporaries found by the holder are leftovers of a dead
process, never another live process's files; a second process waits, then finds
the cases done and only reads them.

The statistics come from the dataset's one fingerprint, shared with the planner: a
``planner=auto`` run has computed it already, and ``ct`` normalisation computes it (one read
of every case) and saves it for the planner; preprocessing that needs only spacings and finds
no fingerprint reads the headers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from segkit.data.fingerprint import (
    Fingerprint,
    cached_fingerprint,
    compute_dataset_fingerprint,
    header_spacings,
    save_fingerprint,
)
from segkit.data.layouts import CaseFiles, Dataset, dataset_json_path, read_dataset
from segkit.data.preprocess import IntensityStats, Preprocessor
from segkit.errors import ConfigError, DataError
from segkit.fsio import file_lock, read_json, save_json_atomic, save_npy_atomic

CACHE_VERSION = 1
MAX_FG_PER_CLASS = 10_000


@dataclass(frozen=True)
class PreprocessedDataset:
    """A finished cache directory.

    Attributes:
        cache_dir: The settings-specific directory.
        preprocessor: The resolved preprocessing.
        case_ids: Preprocessed training cases, in dataset order.
    """

    cache_dir: Path
    preprocessor: Preprocessor
    case_ids: tuple[str, ...]

    @property
    def cases_dir(self) -> Path:
        """Directory holding the per-case arrays."""
        return self.cache_dir / "cases"


def settings_hash(settings: dict[str, Any], root: Path, files: Sequence[Path] = ()) -> str:
    """Digest of the requested settings, the dataset's dataset.json and its files' stats.

    Size and modification time of every listed file are included, so replacing an
    image under the same name gives a new cache instead of stale arrays.
    """
    digest = hashlib.sha256(dataset_json_path(root).read_bytes()).hexdigest()
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    payload = json.dumps(
        {"settings": settings, "dataset_json": digest, "version": CACHE_VERSION, "files": stats},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def resolve_normalization(request: str | Sequence[str], channel_names: Sequence[str]) -> tuple:
    """Per-channel scheme from ``"auto"``/a scheme name/a list of names."""
    if isinstance(request, str):
        request = [request] * len(channel_names)
    if not isinstance(request, Sequence):
        raise ConfigError(
            f"data.normalization={request!r}: expected auto, zscore, ct, none or one per channel."
        )
    request = list(request)
    if len(request) != len(channel_names):
        raise ConfigError(
            f"data.normalization has {len(request)} entries for channels {list(channel_names)}."
        )
    out = []
    for scheme, name in zip(request, channel_names):
        if scheme == "auto":
            scheme = "ct" if name.strip().upper() == "CT" else "zscore"
        if scheme not in ("zscore", "ct", "none"):
            raise ConfigError(f"data.normalization={scheme!r}; allowed: auto, zscore, ct, none.")
        out.append(scheme)
    return tuple(out)


def _run_parallel(
    fn: Callable, jobs: Sequence[tuple], *, num_workers: int, desc: str, progress: bool
) -> list[Any]:
    results: list[Any] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress or not jobs, leave=False)
    if num_workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = fn(*job)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
            try:
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()
    return results


def compute_fingerprint(
    dataset: Dataset,
    *,
    need_intensities: bool,
    cache_base: Path | None = None,
    num_workers: int = 1,
    progress: bool = True,
) -> tuple[dict[str, Any], Fingerprint | None]:
    """The spacings of all training cases and, if needed, foreground intensity statistics.

    Taken from the dataset's fingerprint under ``cache_base`` when there is one; else
    ``need_intensities`` computes it (one read of every case), and otherwise the headers give
    the spacings.

    Args:
        dataset: The parsed dataset.
        need_intensities: ``ct`` statistics are needed.
        cache_base: Where the dataset's fingerprint is cached (default ``<root>/segkit_cache``).
        num_workers: Processes for the fingerprint pass.
        progress: Show a progress bar.

    Returns:
        The JSON-able dict (``spacings``, ``median_spacing``, ``intensity_stats``) and the
        fingerprint computed here, for the caller to save once the statistics are accepted
        (None when none was computed).
    """
    fingerprint = cached_fingerprint(dataset, cache_base)
    computed = None
    if fingerprint is None and need_intensities:
        fingerprint = computed = compute_dataset_fingerprint(
            dataset, num_workers=num_workers, progress=progress
        )
    if fingerprint is None:
        spacings = header_spacings(dataset)
    else:
        spacings = [list(sp) for sp in fingerprint.spacings]
    fp: dict[str, Any] = {
        "spacings": spacings,
        "median_spacing": np.median(np.asarray(spacings), axis=0).tolist(),
        "intensity_stats": None,
    }
    if need_intensities:
        fp["intensity_stats"] = fingerprint.clip_statistics()
    return fp, computed


def _process_case(pre: dict[str, Any], case: CaseFiles, out_dir: Path, seed: int) -> str:
    preprocessor = Preprocessor.from_dict(pre)
    image, label, props = preprocessor.preprocess_case(case.images, case.label)
    rng = np.random.default_rng(seed)
    fg = []
    present = []
    for cls in range(1, preprocessor.num_classes):
        idx = np.argwhere(label == cls)
        if len(idx):
            present.append(cls)
        if len(idx) > MAX_FG_PER_CLASS:
            idx = idx[np.sort(rng.choice(len(idx), MAX_FG_PER_CLASS, replace=False))]
        fg.append(np.concatenate([np.full((len(idx), 1), cls), idx], axis=1))
    fg_arr = np.concatenate(fg).astype(np.int32) if fg else np.zeros((0, 4), np.int32)
    cid = case.case_id
    save_npy_atomic(out_dir / f"{cid}_image.npy", image)
    save_npy_atomic(out_dir / f"{cid}_label.npy", label)
    save_npy_atomic(out_dir / f"{cid}_fg.npy", fg_arr)
    props.update(case_id=cid, label_path=str(case.label), classes_present=present)
    save_json_atomic(out_dir / f"{cid}.json", props)  # last: marks the case as done
    return cid


def _remove_leftovers(folder: Path) -> None:
    # Only called under the cache lock: any temporary here belongs to a dead process.
    for tmp in folder.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


def _check_intensity_stats(
    fingerprint: dict[str, Any], schemes: Sequence[str], dataset: Dataset
) -> None:
    """Refuses ``ct`` statistics without spread (no foreground anywhere, or constant)."""
    stats = fingerprint.get("intensity_stats") or [None] * len(schemes)
    for ch, (scheme, s) in enumerate(zip(schemes, stats)):
        if scheme != "ct" or s is None or (s["upper"] > s["lower"] and s["std"] > 0):
            continue
        name = dataset.info.channel_names[ch]
        raise DataError(
            f"{dataset.root / 'dataset.json'}: channel {ch} ({name!r}) uses 'ct' normalisation, "
            f"but its foreground intensities over the {len(dataset.training)} training cases "
            f"have no spread (0.5/99.5 % percentiles {s['lower']:g}/{s['upper']:g}, std "
            f"{s['std']:g}): no training label has a foreground voxel, or the image is "
            "constant under them, so every image would become a constant. Fix: check that "
            "labelsTr/ holds the real segmentations, or set data.normalization=zscore."
        )


def default_cache_base(root: Path) -> Path:
    """Default cache base: ``<root>/segkit_cache``."""
    return Path(root) / "segkit_cache"


def preprocess_dataset(
    root: Path,
    *,
    cache_dir: Path | None = None,
    target_spacing: Sequence[float] | None = None,
    normalization: str | Sequence[str] = "auto",
    image_order: int = 3,
    crop_nonzero: bool = True,
    num_workers: int = 2,
    progress: bool = True,
) -> PreprocessedDataset:
    """Fingerprints and preprocesses all training cases once; reuses the cache.

    Args:
        root: Dataset directory (Decathlon or nnU-Net v2 layout).
        cache_dir: Base directory for caches; default ``<root>/segkit_cache``.
        target_spacing: Spacing in mm (RAS order); None = dataset median.
        normalization: ``"auto"``, ``"zscore"``, ``"ct"``, ``"none"`` or one per channel.
        image_order: Spline order for image resampling.
        crop_nonzero: Crop each case to its nonzero bounding box.
        num_workers: Parallel processes (<=1: in this process).
        progress: Show progress bars.

    Returns:
        The finished cache.
    """
    root = Path(root)
    dataset = read_dataset(root)
    settings = {
        "target_spacing": None if target_spacing is None else [float(s) for s in target_spacing],
        "normalization": normalization if isinstance(normalization, str) else list(normalization),
        "image_order": int(image_order),
        "crop_nonzero": bool(crop_nonzero),
    }
    base = Path(cache_dir) if cache_dir is not None else default_cache_base(root)
    files = [f for case in dataset.training for f in (*case.images, case.label) if f]
    out = base / settings_hash(settings, root, files)
    waiting = f"{out}: another process is preprocessing this dataset; waiting for it to finish"
    with file_lock(out / ".lock", waiting=waiting):
        try:
            return _fill_cache(
                dataset,
                out,
                settings,
                cache_base=base,
                target_spacing=target_spacing,
                normalization=normalization,
                image_order=image_order,
                crop_nonzero=crop_nonzero,
                num_workers=num_workers,
                progress=progress,
            )
        except OSError as err:  # the inputs' own read errors are DataErrors already
            raise DataError(
                f"{out}: the preprocessing cache cannot be written ({err}). Fix: rm -r {out}, "
                "or data.cache_dir=DIR (segkit makes it again)"
            ) from err


def _fill_cache(
    dataset: Dataset,
    out: Path,
    settings: dict[str, Any],
    *,
    cache_base: Path,
    target_spacing: Sequence[float] | None,
    normalization: str | Sequence[str],
    image_order: int,
    crop_nonzero: bool,
    num_workers: int,
    progress: bool,
) -> PreprocessedDataset:
    """Completes the cache directory `out`; the caller holds its lock."""
    cases_dir = out / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    _remove_leftovers(cases_dir)

    pre_path = out / "preprocessor.json"
    if pre_path.is_file():
        preprocessor = _cache_json(pre_path, Preprocessor.from_dict)
    else:
        info = dataset.info
        schemes = resolve_normalization(normalization, info.channel_names)
        fp_path = out / "fingerprint.json"
        if fp_path.is_file():
            fingerprint = _cache_json(fp_path)
            _check_intensity_stats(fingerprint, schemes, dataset)
        else:
            fingerprint, computed = compute_fingerprint(
                dataset,
                need_intensities="ct" in schemes,
                cache_base=cache_base,
                num_workers=num_workers,
                progress=progress,
            )
            _check_intensity_stats(fingerprint, schemes, dataset)
            if computed is not None:  # saved after the check: a refused dataset leaves no JSON
                save_fingerprint(computed, dataset, cache_base)
            save_json_atomic(fp_path, fingerprint)
        stats = fingerprint["intensity_stats"] or [None] * info.num_channels
        preprocessor = Preprocessor(
            target_spacing=tuple(
                float(s) for s in (target_spacing or fingerprint["median_spacing"])
            ),
            normalization=schemes,
            num_channels=info.num_channels,
            num_classes=info.num_label_values,  # label values the files hold (incl. ignore)
            intensity_stats=tuple(
                IntensityStats(**s) if s is not None and sc == "ct" else None
                for s, sc in zip(stats, schemes)
            ),
            crop_nonzero=crop_nonzero,
            image_order=image_order,
        )
        save_json_atomic(pre_path, preprocessor.to_dict())
    # after the checks above, so a refused dataset leaves no JSON behind
    save_json_atomic(out / "settings.json", {**settings, "root": str(dataset.root.resolve())})

    todo = [c for c in dataset.training if not (cases_dir / f"{c.case_id}.json").is_file()]
    pre_dict = preprocessor.to_dict()
    jobs = [
        (pre_dict, case, cases_dir, int(hashlib.md5(case.case_id.encode()).hexdigest()[:8], 16))
        for case in todo
    ]
    _run_parallel(
        _process_case, jobs, num_workers=num_workers, desc="preprocess", progress=progress
    )
    return PreprocessedDataset(
        cache_dir=out,
        preprocessor=preprocessor,
        case_ids=tuple(c.case_id for c in dataset.training),
    )


def load_props(cases_dir: Path, case_id: str) -> dict[str, Any]:
    """Reads the props JSON of a finished case."""
    path = Path(cases_dir) / f"{case_id}.json"
    if not path.is_file():
        raise DataError(
            f"{path}: case '{case_id}' is not preprocessed. Fix: call "
            "SegDataModule.prepare_data() (or preprocess_dataset) first."
        )
    return _cache_json(path)


def _cache_json(path: Path, parse: Callable[[Any], Any] = dict) -> Any:
    """A JSON file of the cache, parsed; a damaged one is refused by name, with the fix."""
    try:
        return parse(read_json(path))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        folder = path.parent.parent if path.parent.name == "cases" else path.parent
        raise DataError(
            f"{path}: a damaged file of segkit's preprocessing cache ({type(err).__name__}: "
            f"{err}). Fix: rm -r {folder} (the next run preprocesses again)"
        ) from err


def open_case(cases_dir: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Memory-maps a finished case: ``(image (C,*S), label (*S), fg (N, 4))``."""
    cases_dir = Path(cases_dir)
    load_props(cases_dir, case_id)  # raises if unfinished
    return (
        np.load(cases_dir / f"{case_id}_image.npy", mmap_mode="r"),
        np.load(cases_dir / f"{case_id}_label.npy", mmap_mode="r"),
        np.load(cases_dir / f"{case_id}_fg.npy"),
    )
