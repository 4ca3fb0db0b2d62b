"""Dataset layouts: Medical Segmentation Decathlon and nnU-Net v2 raw.

Both are described by a `dataset.json` at the dataset root; the layout is
detected from its keys (`modality` → Decathlon, `channel_names` → nnU-Net v2).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segkit.data.io import NIFTI_SUFFIXES, strip_nifti_suffix
from segkit.data.regions import ORDER_KEY, Region, describe_outputs, has_regions, parse_regions
from segkit.errors import DataError
from segkit.fsio import read_json

MSD = "msd"
NNUNET = "nnunet"


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, read from `dataset.json`.

    Attributes:
        num_channels: Input channels (modalities).
        num_classes: Output classes including background.
        label_names: Class index → name.
        channel_names: Channel names in channel order (e.g. ``["CT"]``).
        layout: ``"msd"`` or ``"nnunet"``.
        num_training: Number of labelled training cases.
        ignore_label: The label value of unannotated voxels (``"ignore"`` in
            dataset.json), None without one. It is not a class: it equals
            `num_classes` (the next value after the classes, nnU-Net v2's rule).
        regions: For a region dataset (nnU-Net v2: labels mapped to lists of values),
            the regions in output-channel order; empty otherwise. `num_classes` then
            counts the label values of the label files (0..K) and `label_names` names
            each value by the region that writes it.
        regions_class_order: The label value each region writes (dataset.json
            ``regions_class_order``); empty without regions.
    """

    num_channels: int
    num_classes: int
    label_names: dict[int, str]
    channel_names: list[str]
    layout: str
    num_training: int
    ignore_label: int | None = None
    regions: tuple[Region, ...] = ()
    regions_class_order: tuple[int, ...] = ()

    @property
    def num_label_values(self) -> int:
        """Values a label file may hold: the classes, plus the ignore label if any."""
        return self.num_classes + (self.ignore_label is not None)

    @property
    def num_outputs(self) -> int:
        """Output channels of the network: one per region, else one per class."""
        return len(self.regions) or self.num_classes

    def describe_outputs(self) -> str | None:
        """The plan table's line for region outputs (None for softmax classes)."""
        return describe_outputs(self.regions, self.regions_class_order) if self.regions else None


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: Identifier (file name without channel suffix and extension).
        images: One 4D/3D file (Decathlon) or one 3D file per channel (nnU-Net).
        label: The label map, None for unlabelled (test) cases.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class Dataset:
    """A parsed dataset: its info, training and test cases.

    Attributes:
        root: The dataset directory.
        info: Channels, classes and layout.
        training: Labelled cases.
        test: Unlabelled cases (may be empty).
    """

    root: Path
    info: DatasetInfo
    training: tuple[CaseFiles, ...]
    test: tuple[CaseFiles, ...]


def _fix_root(root: Path) -> str:
    return (
        "Fix: set data.root=/path/to/dataset, or write the synthetic demo there with "
        f"`segkit make-demo {root}`."
    )


def dataset_json_path(root: Path) -> Path:
    """Returns `root/dataset.json`, raising a `DataError` if it is missing."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset directory {root} does not exist. {_fix_root(root)}")
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(
            f"{path} is missing: {root} is not a Decathlon or nnU-Net v2 dataset. "
            + _fix_root(root)
        )
    return path


def _no_duplicate_keys(path: Path) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise DataError(
                    f"{path}: key {key!r} appears twice in one object ({seen[key]!r} and "
                    f"{value!r}); JSON would silently keep only the last. Fix: keep one."
                )
            seen[key] = value
        return seen

    return hook


def load_dataset_json(root: Path) -> dict[str, Any]:
    """Reads and parses `root/dataset.json` (a key given twice in one object is an error)."""
    path = dataset_json_path(root)
    try:
        meta = read_json(path, object_pairs_hook=_no_duplicate_keys(path))
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err}). Fix: make it readable.") from err
    except DataError:
        raise
    except ValueError as err:
        raise DataError(f"{path}: invalid JSON ({err}). Fix: repair the file.") from err
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object at top level.")
    return meta


def detect_layout(meta: dict[str, Any], *, path: Path) -> str:
    """Returns ``"nnunet"`` or ``"msd"`` from the keys of a parsed dataset.json."""
    if "channel_names" in meta:
        return NNUNET
    if "modality" in meta:
        return MSD
    raise DataError(
        f"{path}: has neither 'modality' (Decathlon) nor 'channel_names' (nnU-Net v2). "
        "Fix: add one of them mapping channel index to name, e.g. "
        '"modality": {"0": "CT"}.'
    )


def _index_map(obj: Any, *, key: str, path: Path) -> list[str]:
    if not isinstance(obj, dict) or not obj:
        raise DataError(f'{path}: \'{key}\' must be a non-empty object like {{"0": "CT"}}.')
    try:
        items = sorted((int(k), v) for k, v in obj.items())
    except ValueError as err:
        raise DataError(f"{path}: '{key}' keys must be integers as strings: {obj}.") from err
    bad = [v for _, v in items if not isinstance(v, str)]
    if bad:
        raise DataError(
            f"{path}: '{key}' values must be names (strings), got {bad[0]!r} in {obj}. "
            'Fix: write e.g. {"0": "CT"}.'
        )
    counts = Counter(i for i, _ in items)
    twice = sorted(i for i, n in counts.items() if n > 1)
    if twice:
        raise DataError(
            f"{path}: '{key}' gives index {twice[0]} more than once "
            f"({[k for k in obj if int(k) == twice[0]]}). Fix: one entry per index."
        )
    if [i for i, _ in items] != list(range(len(items))):
        raise DataError(
            f"{path}: '{key}' indices must be 0..{len(items) - 1} without gaps, got "
            f"{[i for i, _ in items]}. Fix: renumber them."
        )
    return [name for _, name in items]


def _label_names(meta: dict[str, Any], layout: str, *, path: Path) -> dict[int, str]:
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: 'labels' must be a non-empty object. Fix: add it.")
    if layout == MSD:
        return dict(enumerate(_index_map(labels, key="labels", path=path)))
    out: dict[int, str] = {}
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(
                f"{path}: label '{name}' maps to {value!r}; region-based labels (lists) are "
                "not supported. Fix: use one integer per class."
            )
        if value in out:
            raise DataError(
                f"{path}: labels '{out[value]}' and '{name}' both have the value {value}; "
                "they would be one class under two names. Fix: give each class its own value."
            )
        out[value] = str(name)
    if sorted(out) != list(range(len(out))):
        raise DataError(
            f"{path}: label values must be 0..{len(out) - 1} (0 = background), got "
            f"{sorted(out)}. Fix: renumber the labels."
        )
    return dict(sorted(out.items()))


def _is_ignore(name: str) -> bool:
    return name.strip().lower() == "ignore"


def _split_ignore(meta: dict[str, Any], layout: str, *, path: Path) -> int | None:
    """Removes the ``ignore`` label from ``meta["labels"]`` (in place); returns its value.

    nnU-Net v2's convention: ``"ignore": k`` marks unannotated voxels, and k must be the
    highest label value, one above the last class (classes 0..k-1). The Decathlon layout
    writes it as ``"k": "ignore"``.
    """
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        return None
    keys = [key for key, v in labels.items() if _is_ignore(str(key) if layout != MSD else str(v))]
    if not keys:
        return None
    if len(keys) > 1:
        raise DataError(
            f"{path}: 'labels' declares 'ignore' more than once ({keys}). Fix: keep one."
        )
    key = keys[0]
    if layout == MSD:
        try:
            value: Any = int(key)
        except ValueError:
            value = key
        shown = f'"{key}": "ignore"'
    else:
        value = labels[key]
        shown = f'"{key}": {value!r}'
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DataError(
            f"{path}: 'labels' {shown}: the ignore label must be one integer label value "
            'above the classes. Fix: write e.g. "ignore": 3 with classes 0, 1, 2.'
        )
    rest = {k: v for k, v in labels.items() if k != key}
    values = []
    for k, v in rest.items():
        try:
            values.append(int(k) if layout == MSD else v)
        except ValueError:
            continue  # reported by the class parsing that follows
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if value in ints:
        other = next(k for k, v in zip(rest, values) if v == value)
        raise DataError(
            f"{path}: 'labels' {shown} collides with the class '{other}', which has the "
            f"value {value} too; a voxel cannot be both unannotated and that class. Fix: "
            f"give 'ignore' the value {max(ints) + 1} (one above the highest class) and "
            "relabel the unannotated voxels of the label files with it."
        )
    if ints and value != max(ints) + 1:
        where = "below the highest class" if value < max(ints) else "not next to the classes"
        raise DataError(
            f"{path}: 'labels' {shown} is {where} (classes {sorted(ints)}); nnU-Net v2's "
            "convention is that the ignore label is the highest value, one above the last "
            f"class. Fix: set 'ignore' to {max(ints) + 1} and relabel the unannotated "
            "voxels of the label files with it (renumber the classes to close any gap)."
        )
    meta["labels"] = rest
    return value


def _relative_path(value: Any, *, where: str, path: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"{path}: {where} must be a file path (a non-empty string), got {value!r}. "
            'Fix: write e.g. "./imagesTr/case_001.nii.gz".'
        )
    return value


def _check_unique_ids(cases: list[CaseFiles], *, what: str, path: Path) -> None:
    first: dict[str, CaseFiles] = {}
    for case in cases:
        other = first.get(case.case_id)
        if other is not None:
            raise DataError(
                f"{path}: two {what} cases have the id '{case.case_id}' ({other.images[0]} "
                f"and {case.images[0]}); their preprocessed files and predictions would "
                "overwrite each other. Fix: give every case file a distinct name."
            )
        first[case.case_id] = case


def _resolve(root: Path, rel: str) -> Path:
    if Path(rel).is_absolute():
        return Path(rel)
    try:
        return (root / rel).resolve()
    except (RuntimeError, OSError) as err:  # Python's words for a symlink loop
        raise DataError(
            f"{root / rel}: cannot be resolved ({err}). Fix: point the symlink at the file."
        ) from err


def _msd_cases(meta: dict[str, Any], root: Path, *, path: Path) -> tuple[list, list]:
    training = []
    entries = meta.get("training")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: 'training' must be a non-empty list of {{image, label}}.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{path}: training[{i}] must have 'image' and 'label', got {entry}.")
        image = _resolve(
            root, _relative_path(entry["image"], where=f"training[{i}].image", path=path)
        )
        label = _relative_path(entry["label"], where=f"training[{i}].label", path=path)
        training.append(
            CaseFiles(
                # the entry's own name: a symlinked file's target may be named otherwise
                case_id=strip_nifti_suffix(Path(entry["image"]).name),
                images=(image,),
                label=_resolve(root, label),
            )
        )
    entries = meta.get("test", []) or []
    if not isinstance(entries, list):
        raise DataError(
            f"{path}: 'test' must be a list of image paths, got {type(entries).__name__}. "
            'Fix: write e.g. "test": ["./imagesTs/case_100.nii.gz"].'
        )
    test = []
    for i, rel in enumerate(entries):
        rel = rel.get("image") if isinstance(rel, dict) else rel
        image = _resolve(root, _relative_path(rel, where=f"test[{i}]", path=path))
        case_id = strip_nifti_suffix(Path(rel).name)
        test.append(CaseFiles(case_id=case_id, images=(image,), label=None))
    return training, test


def _nnunet_cases(
    meta: dict[str, Any], root: Path, num_channels: int, *, path: Path
) -> tuple[list, list]:
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or ending not in NIFTI_SUFFIXES:
        raise DataError(
            f"{path}: file_ending {ending!r} is not supported; segkit reads "
            f"{NIFTI_SUFFIXES}. Fix: convert the files to NIfTI."
        )

    def channels(folder: Path, case_id: str) -> tuple[Path, ...]:
        return tuple(folder / f"{case_id}_{c:04d}{ending}" for c in range(num_channels))

    labels_dir = root / "labelsTr"
    label_files = sorted(labels_dir.glob(f"*{ending}")) if labels_dir.is_dir() else []
    training = [
        CaseFiles(
            case_id=p.name[: -len(ending)],
            images=channels(root / "imagesTr", p.name[: -len(ending)]),
            label=p,
        )
        for p in label_files
    ]
    expected = meta.get("numTraining")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
        raise DataError(
            f"{path}: numTraining must be a whole number, got {expected!r}. Fix: write the "
            f'number of training cases, e.g. "numTraining": {len(training)}.'
        )
    if expected is not None and expected != len(training):
        raise DataError(
            f"{path}: numTraining is {expected} but {labels_dir} holds {len(training)} "
            f"'*{ending}' label files. Fix: add the missing labels or correct numTraining."
        )
    if not training:
        raise DataError(f"{labels_dir}: no '*{ending}' label files found. Fix: add them.")
    test_ids = sorted(
        {p.name[: -len(ending)][:-5] for p in (root / "imagesTs").glob(f"*_0000{ending}")}
    )
    test = [
        CaseFiles(case_id=c, images=channels(root / "imagesTs", c), label=None) for c in test_ids
    ]
    return training, test


@dataclass(frozen=True)
class DatasetLabels:
    """What the label values of a ``dataset.json`` mean (see `DatasetInfo`).

    Attributes:
        names: label value → name (for regions: the region writing the value).
        ignore_label: the value of unannotated voxels, None without one.
        regions: the regions in output-channel order; empty without regions.
        regions_class_order: the label value each region writes; empty without regions.
    """

    names: dict[int, str]
    ignore_label: int | None = None
    regions: tuple[Region, ...] = ()
    regions_class_order: tuple[int, ...] = ()


def _labels(meta: dict[str, Any], layout: str, *, path: Path) -> DatasetLabels:
    if layout == NNUNET and has_regions(meta.get("labels")):
        regions, order, names = parse_regions(meta, path=path)
        return DatasetLabels(names, regions=regions, regions_class_order=order)
    if ORDER_KEY in meta:
        raise DataError(
            f"{path}: '{ORDER_KEY}' is given but no label maps to a list of values, so "
            "there are no regions to order (regions need the nnU-Net v2 layout, "
            '"channel_names" and e.g. "whole_tumor": [1, 2, 3]). Fix: remove '
            f"'{ORDER_KEY}', or declare the regions in 'labels'."
        )
    ignore_label = _split_ignore(meta, layout, path=path)
    return DatasetLabels(_label_names(meta, layout, path=path), ignore_label)


def read_labels(root: Path) -> DatasetLabels:
    """The labels of ``root/dataset.json`` alone (no case is listed, no file looked for).

    Raises:
        DataError: dataset.json missing, unreadable, or with invalid labels (names it).
    """
    meta = load_dataset_json(root)
    path = Path(root) / "dataset.json"
    return _labels(meta, detect_layout(meta, path=path), path=path)


def read_dataset(root: Path) -> Dataset:
    """Parses a dataset directory in either layout.

    Args:
        root: Directory holding `dataset.json`.

    Returns:
        The parsed dataset. Files are listed, not opened; missing files are
        reported here.

    Raises:
        DataError: Missing/invalid dataset.json or missing files.
    """
    root = Path(root)
    meta = load_dataset_json(root)
    path = root / "dataset.json"
    layout = detect_layout(meta, path=path)
    channel_names = _index_map(
        meta["modality" if layout == MSD else "channel_names"],
        key="modality" if layout == MSD else "channel_names",
        path=path,
    )
    labels = _labels(meta, layout, path=path)
    if layout == MSD:
        training, test = _msd_cases(meta, root, path=path)
    else:
        training, test = _nnunet_cases(meta, root, len(channel_names), path=path)
    _check_unique_ids(training, what="training", path=path)
    _check_unique_ids(test, what="test", path=path)
    for case in training:
        for file in (*case.images, case.label):
            if not file.is_file():
                raise DataError(
                    f"{file}: listed for case '{case.case_id}' in {path} but does not exist. "
                    "Fix: add the file or remove the case from dataset.json."
                )
    info = DatasetInfo(
        num_channels=len(channel_names),
        num_classes=len(labels.names),
        label_names=labels.names,
        channel_names=channel_names,
        layout=layout,
        num_training=len(training),
        ignore_label=labels.ignore_label,
        regions=labels.regions,
        regions_class_order=labels.regions_class_order,
    )
    return Dataset(root=root, info=info, training=tuple(training), test=tuple(test))


def read_dataset_info(root: Path) -> DatasetInfo:
    """Reads only the dataset's info (cheap: dataset.json plus a directory listing)."""
    return read_dataset(root).info
