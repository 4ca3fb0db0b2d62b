"""Predict NIfTI cases with a trained checkpoint and write label maps on the input grid.

Flow per case: the checkpoint's saved preprocessing (reorient, crop, resample,
normalise) → whole-volume or sliding-window logits → argmax → inversion
(resample back, un-crop, undo reorientation) → one NIfTI with the input's
shape, affine and header, written atomically (temporary name, then rename).

Every input is checked before the first prediction (files exist, headers read,
channel count matches the model, output directory writable and not the inputs'
folder), so a bad input fails with one clear message and leaves no output behind.
A case whose image body turns out corrupt fails alone: every other case is still
written (each atomically), and the error names what was written and what failed.
A full disk stops the run with one line naming the file. Each output records what wrote
it (:mod:`segkit.inference.predict.record`): the same command again, into the same
folder, skips the cases already written by the same checkpoints, options and inputs and
overwrites the others.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from segkit.data.invert import (
    ProbabilityFile,
    invert_probabilities,
    probability_bytes,
    write_probabilities_npz,
)
from segkit.data.io import NIFTI_SUFFIXES, quiet_nibabel, strip_nifti_suffix, write_nifti
from segkit.defaults import DEFAULT_OVERLAP
from segkit.errors import ConfigError, DataError, DiskFullError, SegkitError
from segkit.fsio import atomic_path, disk_full, is_disk_full
from segkit.inference.engine.segment import segment
from segkit.inference.engine.settings import Decision, InferenceSettings
from segkit.inference.engine.sliding import ModelRun
from segkit.inference.predict.checkpoint import LoadedModel, load_model
from segkit.inference.predict.decision import find_selection, resolve_checkpoints
from segkit.inference.predict.nnunet_folder import (
    CHECKPOINTS,
    TILE_STEP,
    NnUNetInput,
    SpilledLogits,
    is_nnunet_folder,
    load_nnunet_folder,
)
from segkit.inference.predict.parts import (
    check_workers,
    describe_part,
    parse_part,
    read_ahead,
    select_part,
)
from segkit.inference.predict.postprocess import apply_postprocessing, check_steps
from segkit.inference.predict.record import (
    NPZ_MEMBER,
    already_written,
    case_record,
    model_files,
    nifti_extension,
    npz_member,
    run_record,
)

SKIPPED = "is already written by these checkpoints and options"
RERUN = (
    "run the same command again: the cases already written by these checkpoints and "
    "options are skipped"
)

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class InputCase:
    """One case to predict.

    Attributes:
        case_id: output name (without extension).
        images: one multi-channel file (Decathlon) or one file per channel (nnU-Net).
    """

    case_id: str
    images: tuple[Path, ...]


@dataclass(frozen=True)
class PredictOptions:
    """How to predict.

    Attributes:
        mode: ``auto`` | ``whole`` | ``sliding`` (``auto``: whole volume only where it
            gives the sliding window's answer; see :func:`segkit.inference.engine.decide`).
        overlap: sliding-window overlap in [0, 1); None: the setting measured at the end
            of training and stored in the checkpoint, else 0.5.
        window_scale: sliding window as a multiple of the training patch (>= 1); None:
            the checkpoint's measured setting, else 1.
        tta: mirroring test-time augmentation; None: the model's default (off for segkit
            checkpoints; on for nnU-Net model folders, over their allowed axes, as nnU-Net).
        save_probabilities: also write ``{case}.npz`` with class probabilities.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        sw_batch_size: windows per forward call (None: the engine's default for the network).
        progress: progress bars over cases and windows.
        part: ``I/N``: predict only the I-th of N disjoint shares of the cases (sorted by
            case id, every N-th from the I-th; see :mod:`segkit.inference.predict.parts`), so N
            processes or jobs share a folder; ``1/1``: every case.
        workers: threads reading and preprocessing the next cases while the current one
            is inferred (0: each case read when its turn comes); outputs are the same.
        postprocess: steps applied to each label map on the input's grid before it is
            written (:mod:`segkit.inference.predict.postprocess`; e.g. ``largest_per_class``).
        max_memory_gb: budget for one case's prediction: the tile layout and the window
            batch are chosen to fit it, and said in the per-case line; None: each network's
            accumulator under 256 MiB (:mod:`segkit.inference.engine.memory`).
        nnunet_folds: for an nnU-Net model folder, the folds to average (``0``, ``all``, ...);
            None: every fold found.
        nnunet_checkpoint: for an nnU-Net model folder, ``final`` or ``best``.
    """

    mode: str = "auto"
    overlap: float | None = None
    window_scale: float | None = None
    tta: bool | None = None
    save_probabilities: bool = False
    device: str = "auto"
    sw_batch_size: int | None = None
    progress: bool = True
    part: str = "1/1"
    workers: int = 0
    postprocess: tuple[str, ...] = ()
    max_memory_gb: float | None = None
    nnunet_folds: tuple[str, ...] | None = None
    nnunet_checkpoint: str = "final"

    def __post_init__(self) -> None:
        object.__setattr__(self, "postprocess", check_steps(self.postprocess))
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise ConfigError(
                f"max_memory_gb: got {self.max_memory_gb}; expected a positive number of GB "
                "(or null for no budget)"
            )
        parse_part(self.part)
        check_workers(self.workers)
        # the same checks as the engine's settings, before any file is read
        InferenceSettings(
            mode=self.mode,
            overlap=DEFAULT_OVERLAP if self.overlap is None else self.overlap,
            window_scale=1.0 if self.window_scale is None else self.window_scale,
            sw_batch_size=self.sw_batch_size,
            tta=bool(self.tta),
        )
        if self.nnunet_folds is not None:
            object.__setattr__(self, "nnunet_folds", tuple(str(f) for f in self.nnunet_folds))
        if self.nnunet_checkpoint not in CHECKPOINTS:
            raise ConfigError(
                f"nnunet_checkpoint={self.nnunet_checkpoint!r}; allowed: {', '.join(CHECKPOINTS)}"
            )

    def settings(self, model: LoadedModel) -> tuple[InferenceSettings, str]:
        """The engine settings for ``model`` and where its overlap and window came from."""
        if model.origin == "nnunet":  # nnU-Net's predictor: sliding, step 0.5, mirroring
            # over the checkpoint's allowed axes; tta=true where it allows none: every axis
            allowed = model.mirror_axes
            settings = InferenceSettings(
                mode="sliding" if self.mode == "auto" else self.mode,
                overlap=1 - TILE_STEP if self.overlap is None else self.overlap,
                window_scale=1.0 if self.window_scale is None else self.window_scale,
                sw_batch_size=self.sw_batch_size,
                tta=bool(allowed) if self.tta is None else self.tta,
                mirror_axes=allowed or None,
            )
            given = self.overlap is not None or self.window_scale is not None
            return settings, "given" if given else f"nnU-Net's tile step {TILE_STEP:g}"
        cal = model.calibration or {}
        measured = (
            f"measured at the end of training (mean Dice {cal['dice_mean']:.4f})"
            if cal.get("dice_mean") is not None
            else "measured at the end of training"
        )

        def pick(given: float | None, key: str, default: float) -> tuple[float, str]:
            if given is not None:
                return float(given), "given"
            if key in cal:
                return float(cal[key]), measured
            return default, "default"

        overlap, o_src = pick(self.overlap, "overlap", DEFAULT_OVERLAP)
        scale, w_src = pick(self.window_scale, "window_scale", 1.0)
        source = (
            f"overlap/window: {o_src}" if o_src == w_src else f"overlap: {o_src}; window: {w_src}"
        )
        settings = InferenceSettings(
            mode=self.mode,
            overlap=overlap,
            window_scale=scale,
            sw_batch_size=self.sw_batch_size,
            tta=bool(self.tta),
        )
        return settings, source


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first GPU if there is one, else the CPU; checks explicit choices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device: got {name!r}; allowed: auto, cpu, cuda, cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA GPU is available here. Fix: device=cpu")
    return device


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_SUFFIXES)
    )


def find_cases(path: str | Path, *, num_channels: int) -> list[InputCase]:
    """The cases in a NIfTI file or a folder, in either dataset layout.

    A folder holding ``dataset.json`` means its ``imagesTs/``. Files named
    ``{case}_{0000}.nii.gz`` are grouped into cases by channel (nnU-Net) when the
    model has several channels or every file is channel 0000; otherwise each file
    is one case (Decathlon: channels in the 4th axis).

    Raises:
        DataError: nothing to predict, or a case misses channel files.
    """
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(NIFTI_SUFFIXES):
            raise DataError(f"input={path}: not a NIfTI file (.nii or .nii.gz).")
        files = [path]
        if num_channels > 1 and (m := _CHANNEL.match(strip_nifti_suffix(path.name))):
            ending = path.name[len(strip_nifti_suffix(path.name)) :]
            files = [path.with_name(f"{m['case']}_{c:04d}{ending}") for c in range(num_channels)]
        return _group(files, num_channels=num_channels, where=path)
    if not path.is_dir():
        raise DataError(f"input={path}: no such file or directory.")
    folder = path
    if (path / "dataset.json").is_file() and (path / "imagesTs").is_dir():
        folder = path / "imagesTs"
    files = _nifti_files(folder)
    if not files:
        raise DataError(
            f"input={folder}: holds no NIfTI files (*.nii, *.nii.gz). Fix: point input= at "
            "a folder of images (e.g. a dataset's imagesTs/) or at one image file."
        )
    return _group(files, num_channels=num_channels, where=folder)


def _group(files: Sequence[Path], *, num_channels: int, where: Path) -> list[InputCase]:
    names = [strip_nifti_suffix(f.name) for f in files]
    matches = [_CHANNEL.match(n) for n in names]
    nnunet = all(matches) and (
        num_channels > 1 or all(m["channel"] == "0000" for m in matches if m)
    )
    if not nnunet:
        return [InputCase(case_id=n, images=(f,)) for n, f in zip(names, files)]
    cases: dict[str, dict[int, Path]] = {}
    for f, m in zip(files, matches):
        cases.setdefault(m["case"], {})[int(m["channel"])] = f
    out = []
    for case_id, channels in sorted(cases.items()):
        missing = [f"{case_id}_{c:04d}" for c in range(num_channels) if c not in channels]
        extra = sorted(c for c in channels if c >= num_channels)
        if missing or extra:
            raise DataError(
                f"input={where}: case '{case_id}' has channel files "
                f"{sorted(channels)} but the model was trained on {num_channels} channel(s) "
                f"(expects _0000 .. _{num_channels - 1:04d})"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + ". Fix: give every case exactly the training channels."
            )
        out.append(InputCase(case_id=case_id, images=tuple(channels[c] for c in sorted(channels))))
    return out


def check_case(case: InputCase, *, num_channels: int) -> None:
    """Reads only the headers: files exist, are NIfTI, and hold the model's channel count."""
    shapes = []
    for f in case.images:
        if not f.is_file():
            raise DataError(f"{f}: file of case '{case.case_id}' does not exist.")
        try:
            with quiet_nibabel():  # its log lines: the refusal is one line
                shapes.append(tuple(nib.load(str(f)).shape))
        except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad files
            raise DataError(
                f"{f}: cannot be read as NIfTI ({type(err).__name__}: {err}). Fix: copy or "
                "re-export the file."
            ) from err
    if len(case.images) == 1:
        shape = shapes[0]
        while len(shape) > 4 and shape[-1] == 1:
            shape = shape[:-1]
        found = shape[3] if len(shape) == 4 else 1
    else:
        found = len(case.images)
    if found != num_channels:
        raise DataError(
            f"{case.images[0]}: case '{case.case_id}' has {found} channel(s) (shape "
            f"{shapes[0]}) but the model was trained on {num_channels}. Fix: give "
            f"{num_channels} channel(s) as a 4D file (channels last) or as files "
            f"{case.case_id}_0000 .. _{num_channels - 1:04d}."
        )


def check_output_dir(path: str | Path) -> Path:
    """Creates ``path`` if needed and proves it is writable (a probe file is removed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output={path}: exists and is not a directory. Fix: choose a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".segkit-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"output={path}: cannot write there ({err.strerror or err}). Fix: choose a folder "
            "you can write to, or fix its permissions."
        ) from err
    return path


def _output_name(case: InputCase) -> str:
    first = case.images[0].name
    return case.case_id + (".nii.gz" if first.endswith(".nii.gz") else ".nii")


def check_ensemble(models: Sequence[LoadedModel]) -> None:
    """Checkpoints averaged together must predict the same classes from the same inputs.

    Raises:
        ConfigError: another number of channels or classes, other label names, or other
            preprocessing (spacing, normalisation, statistics), naming both checkpoints.
    """
    first = models[0]
    for other in models[1:]:
        why = None
        if other.spec.in_channels != first.spec.in_channels:
            why = f"{other.spec.in_channels} vs {first.spec.in_channels} input channels"
        elif other.label_names != first.label_names:
            why = f"classes {other.label_names} vs {first.label_names}"
        elif other.head != first.head:
            why = f"outputs {other.head} vs {first.head} (regions and classes do not average)"
        elif other.preprocessor != first.preprocessor:
            why = (
                "other preprocessing (target spacing, normalisation or intensity statistics): "
                f"{other.preprocessor} vs {first.preprocessor}"
            )
        if why:
            raise ConfigError(
                f"ckpt={other.path} cannot be averaged with ckpt={first.path}: {why}. Fix: "
                "ensemble checkpoints of one dataset and preprocessing (e.g. the folds of one "
                "`python train.py -m data.fold=0,1,2,3,4`)."
            )


def check_not_overwriting_inputs(cases: Sequence[InputCase], output_dir: Path) -> None:
    """Refuses an output folder that holds input images (outputs would overwrite them or
    mix with them).

    Raises:
        ConfigError: naming the folder and the fix.
    """
    out = output_dir.expanduser().resolve()
    folders = {p.expanduser().resolve().parent for c in cases for p in c.images}
    inputs = {p.expanduser().resolve() for c in cases for p in c.images}
    targets = {out / _output_name(c) for c in cases} | {out / f"{c.case_id}.npz" for c in cases}
    clash = sorted(str(p) for p in targets & inputs)
    if out in folders or clash:
        raise ConfigError(
            f"output={output_dir}: is the folder of the input images"
            + (f" and would overwrite {clash[:3]}" if clash else "")
            + ". Fix: write predictions to another folder, e.g. output=predictions/."
        )


def check_dims(model: LoadedModel) -> None:
    """Prediction runs 2D and 3D networks only."""
    if model.spec.spatial_dims not in (2, 3):
        raise ConfigError(f"prediction supports 2D and 3D models, not {model.spec.spatial_dims}D")


def check_space(output_dir: Path, case_id: str, need: int, what: str, fix: str = "") -> None:
    """Refuses, before inference, a case whose temporaries would not fit the disk.

    Raises:
        DataError: naming the case, the size it would take, the free space and the fix.
    """
    free = shutil.disk_usage(output_dir).free
    if need > free:
        raise DataError(
            f"{what}: case '{case_id}' needs about {need / 2**30:.1f} GiB of disk in "
            f"{output_dir}, but {free / 2**30:.1f} GiB are free. Fix: free space there or "
            f"choose another output={fix}"
        )


def check_disk(output_dir: Path, case_id: str, classes: int, props: dict) -> None:
    """Refuses ``save_probabilities`` before inference where the disk is short (the two
    float16 temporaries and the archive)."""
    need = probability_bytes(classes, props) * 3 // 2
    check_space(output_dir, case_id, need, "save_probabilities", ", or save_probabilities=false")


def _temp_npy(output_dir: Path, case_id: str, tag: str) -> Path:
    """A hidden temporary next to the outputs (``.tmp-`` names, as :mod:`segkit.fsio`)."""
    return output_dir / f".{case_id}.npz.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{tag}.npy"


class CaseDecisions(list):
    """Per checkpoint (what inference ran, where its overlap/window came from), and the
    engine's memory plan (``memory``)."""

    def __init__(self, items=(), *, memory: str = "") -> None:
        super().__init__(items)
        self.memory = memory


def predict_case(
    models: LoadedModel | Sequence[LoadedModel],
    case: InputCase,
    output_dir: Path,
    opts: PredictOptions,
    device: torch.device,
    prepared: tuple[np.ndarray, dict] | None = None,
    record: dict | None = None,
) -> tuple[Path, CaseDecisions]:
    """Predicts one case and writes ``output_dir/{case_id}.nii.gz`` (and ``.npz``).

    ``prepared``: the case already preprocessed (``preprocess_image``'s answer), e.g. read
    ahead by a worker thread; None: preprocessed here. ``record``: what wrote the files
    (:func:`~segkit.inference.predict.record.case_record`), stored in them. The engine
    hands out the labels and,
    for ``save_probabilities``, each tile's probabilities, which go to a float16 file on disk
    and are inverted slab by slab (:mod:`segkit.data.invert`); temporaries are removed and
    the ``.npz`` appears only complete.

    Returns:
        The written label file and, per checkpoint, what inference ran and where its
        overlap/window came from (the memory plan in ``memory``).
    """
    models = [models] if isinstance(models, LoadedModel) else list(models)
    pre = models[0].preprocessor
    image, props = pre.preprocess_image(case.images) if prepared is None else prepared
    head = models[0].head
    classes = models[0].spec.out_channels
    label_names = models[0].output_names(classes)  # per channel: class or region
    out = output_dir / _output_name(case)
    runs, sources = [], []
    for model in models:
        check_dims(model)
        settings, source = opts.settings(model)
        runs.append(ModelRun(model.net, tuple(model.patch_size), settings, model.slice_axis))
        sources.append(source)
    if isinstance(pre, NnUNetInput):
        return _predict_nnunet_case(
            runs, sources, image, props, models[0], case, output_dir, opts, record=record
        )
    temps: list[Path] = []
    try:
        store = None
        if opts.save_probabilities:
            check_disk(output_dir, case.case_id, classes, props)
            temps.append(_temp_npy(output_dir, case.case_id, "pre"))
            store = ProbabilityFile(temps[-1], classes, image.shape[1:])
        result = segment(
            runs,
            torch.from_numpy(image).to(device)[None],
            head,
            classes=classes,
            max_memory_gb=opts.max_memory_gb,
            probabilities=store.write if store else None,
            progress=opts.progress,
        )
        decisions = CaseDecisions(
            list(zip(result.decisions, sources)), memory=result.plan.describe()
        )
        seg_orig = pre.invert(result.labels.cpu().numpy(), props)
        if opts.postprocess:
            seg_orig = apply_postprocessing(seg_orig, opts.postprocess)
        if not opts.save_probabilities:
            write_nifti(out, seg_orig, case.images[0], _extensions(record))
            return out, decisions
        temps.append(_temp_npy(output_dir, case.case_id, "orig"))
        invert_probabilities(temps[0], props, temps[1], regions=head.is_regions)
        with atomic_path(output_dir / f"{case.case_id}.npz", suffix=".npz") as tmp:
            write_probabilities_npz(tmp, temps[1], label_names, _npz_extra(record))
            write_nifti(out, seg_orig, case.images[0], _extensions(record))
        return out, decisions
    finally:
        for path in temps:
            path.unlink(missing_ok=True)


def _predict_nnunet_case(
    runs: Sequence[ModelRun],
    sources: Sequence[str],
    image: np.ndarray,
    props: dict,
    model: LoadedModel,
    case: InputCase,
    output_dir: Path,
    opts: PredictOptions,
    record: dict | None = None,
) -> tuple[Path, CaseDecisions]:
    """One case of an nnU-Net model folder: the folds' logits averaged, nnU-Net's export.

    The export resamples logits, not labels. Where the preprocessing resampled, the engine's
    logit tiles go to a file beside the outputs (:class:`SpilledLogits`) and the export reads
    them back one class at a time; with ``save_probabilities`` they are kept in memory (the
    probabilities of every class are written at once). Where nothing was resampled, the labels
    come tile by tile, as for segkit's models.
    """
    pre = model.preprocessor
    classes = model.spec.out_channels
    device = next(model.net.parameters()).device
    resampled = pre.needs_logits(props)
    spill = resampled and not opts.save_probabilities
    voxels = math.prod(image.shape[1:])
    # beside the engine: the export's temporaries (two float64 channels on the cropped grid,
    # the labels on the file's), and with probabilities the whole case's logits and output
    extra = 0
    if resampled or opts.save_probabilities:
        extra = 18 * math.prod(props["shape_after_cropping_and_before_resampling"])
        extra += 2 * math.prod(props["shape_before_cropping"])
    if opts.save_probabilities:
        extra += 4 * classes * voxels + 12 * classes * math.prod(props["shape_before_cropping"])
    if spill:
        check_space(output_dir, case.case_id, 4 * classes * voxels, "nnU-Net's export")
    budget = opts.max_memory_gb
    if budget is not None and extra:
        budget -= extra / 2**30
        if budget <= 0.5:
            raise ConfigError(
                f"max_memory_gb={opts.max_memory_gb:g}: case '{case.case_id}' needs "
                f"{extra / 2**30:.1f} GiB for nnU-Net's export of {classes} classes besides "
                f"the sliding window. Fix: max_memory_gb={extra / 2**30 + 1:.1f} or more"
                + (", or save_probabilities=false" if opts.save_probabilities else "")
            )
    full = store = None
    if spill:
        temp = _temp_npy(output_dir, case.case_id, "logits")
        store = SpilledLogits(temp, classes, image.shape[1:])
    elif opts.save_probabilities:
        full = np.zeros((classes, *image.shape[1:]), dtype=np.float32)

        def keep(box: tuple[slice, ...], logits: torch.Tensor) -> None:
            full[(slice(None), *box)] = logits.cpu().numpy()

    try:
        result = segment(
            runs,
            torch.from_numpy(image).to(device)[None],
            model.head,
            classes=classes,
            logits=store.write if store else keep if full is not None else None,
            progress=opts.progress,
            average="logits",
            max_memory_gb=budget,
        )
        probs = None
        if store is not None:
            seg = pre.export_labels(store, props)
        elif full is not None:
            seg, probs = pre.export(full, props, return_probabilities=True)
            full = None
        else:
            seg = pre.invert(result.labels.cpu().numpy(), props)
    finally:
        if store is not None:
            store.close()
    memory = result.plan.describe()
    if extra or spill:
        memory += f"; export: + {extra / 2**30:.2f} GiB" + (
            f", {4 * classes * voxels / 2**30:.2f} GiB of logits on disk" if spill else ""
        )
    decisions = CaseDecisions(list(zip(result.decisions, sources)), memory=memory)
    if opts.postprocess:
        seg = apply_postprocessing(seg, opts.postprocess)
    out = output_dir / _output_name(case)
    if probs is None:
        write_nifti(out, seg, case.images[0], _extensions(record))
        return out, decisions
    temp = _temp_npy(output_dir, case.case_id, "orig")
    try:
        np.save(temp, probs.astype(np.float16))
        del probs
        with atomic_path(output_dir / f"{case.case_id}.npz", suffix=".npz") as tmp:
            write_probabilities_npz(tmp, temp, model.output_names(classes), _npz_extra(record))
            write_nifti(out, seg, case.images[0], _extensions(record))
    finally:
        temp.unlink(missing_ok=True)
    return out, decisions


def _extensions(record: dict | None) -> list:
    return [nifti_extension(record)] if record else []


def _npz_extra(record: dict | None) -> dict[str, np.ndarray] | None:
    return {NPZ_MEMBER: npz_member(record)} if record else None


def describe_case(case_id: str, decisions: Sequence[tuple[Decision, str]]) -> str:
    """One line: what ran for a case and why (per checkpoint of an ensemble), and how the
    engine fits its memory."""
    parts = []
    memory = getattr(decisions, "memory", "")
    for n, (decision, source) in enumerate(decisions):
        text = decision.describe()
        if decision.mode == "sliding":
            text += f" [{source}]"
        parts.append(text if len(decisions) == 1 else f"ckpt {n}: {text}")
    return f"{case_id}: " + "; ".join(parts + ([memory] if memory else []))


def predict(
    *,
    ckpt: str | Path | Sequence[str | Path],
    input: str | Path,
    output: str | Path,
    options: PredictOptions | None = None,
    report: Callable[[str], None] | None = None,
    trusted_targets: Sequence[str] = (),
) -> list[Path]:
    """Predicts every case under ``input`` and writes one label NIfTI per case.

    Several checkpoints (a list, ``a.ckpt,b.ckpt``, or a multirun directory of folds)
    are an ensemble: their softmax probabilities are averaged, each checkpoint inferring
    with its own measured setting. Each case is written atomically as soon as it is
    done; a case that fails (e.g. a corrupt image body) does not stop the others, and the
    error at the end names the cases written and the cases that failed; a full disk stops
    the run. A case whose outputs in ``output`` are complete and were written by the same
    checkpoints, options and inputs is skipped (:mod:`segkit.inference.predict.record`). With
    ``options.part="I/N"`` only the I-th of N disjoint shares of the cases is predicted
    (only its files are checked), and the last line names the part and its cases.

    Args:
        ckpt: checkpoint(s) written by segkit's training (nothing else is needed).
        input: a NIfTI file, a folder of them, or a dataset folder (its imagesTs/).
        output: the folder to write ``{case}.nii.gz`` into (created if missing); never
            the folder of the inputs.
        options: mode, overlap, window, TTA, device, ...
        report: called with one line per case saying what inference ran and why
            (default: print).
        trusted_targets: user block classes the checkpoints may import (see
            :func:`~segkit.inference.predict.checkpoint.load_model`).

    Returns:
        The label files of every case (written now, or skipped as already written).

    Raises:
        ConfigError: bad checkpoint, options, ensemble or output folder.
        DataError: no or bad input files, channel mismatch, cases that failed.
        DiskFullError: an output could not be written for want of space.
    """
    opts = options or PredictOptions()
    selection = find_selection(ckpt)
    if selection is not None:  # a `segkit select` decision: its settings are the defaults
        opts = selection.fill(opts)
        (report or print)(selection.describe())
    device = resolve_device(opts.device)
    say = report or print
    if isinstance(ckpt, str | Path) and is_nnunet_folder(ckpt):
        folder, models = load_nnunet_folder(
            ckpt, folds=opts.nnunet_folds, checkpoint=opts.nnunet_checkpoint, device=device
        )
        say(folder.describe())
    elif opts.nnunet_folds is not None:
        raise ConfigError(
            f"nnunet_folds: ckpt={ckpt} is not an nnU-Net model folder (dataset.json, "
            "plans.json, fold_X/). Fix: leave nnunet_folds out for segkit checkpoints."
        )
    else:
        models = [
            load_model(p, device=device, trusted_targets=trusted_targets)
            for p in resolve_checkpoints(ckpt)
        ]
    for model in models:
        if model.preprocessor is None:
            raise ConfigError(
                f"ckpt={model.path}: holds no preprocessing settings "
                "(hyper_parameters.preprocessor), so inputs cannot be prepared as in training. "
                "Fix: use a checkpoint written by `python train.py` with a segkit data module."
            )
    check_ensemble(models)
    channels = models[0].spec.in_channels
    all_cases = find_cases(input, num_channels=channels)
    part = parse_part(opts.part)
    cases = select_part(all_cases, part)
    for case in cases:  # this part's share only: another part's bad file is its own error
        check_case(case, num_channels=channels)
    names = [_output_name(c) for c in all_cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"input={input}: several inputs would be written as {dupes[:5]}.")
    check_not_overwriting_inputs(all_cases, Path(output))
    out_dir = check_output_dir(output)
    written: list[Path] = []
    failed: list[str] = []
    run = run_record([f for m in models for f in model_files(m)], opts)
    records = {c.case_id: case_record(run, c.images) for c in cases}
    todo = []
    for case in cases:
        path = out_dir / _output_name(case)
        if already_written(path, records[case.case_id], probabilities=opts.save_probabilities):
            written.append(path)
            say(f"{case.case_id}: skipped: {path.name} {SKIPPED}")
        else:
            todo.append(case)
    pre = models[0].preprocessor
    ahead = read_ahead(todo, lambda c: pre.preprocess_image(c.images), workers=opts.workers)
    iterator = ahead
    if opts.progress:
        from tqdm.auto import tqdm

        iterator = tqdm(ahead, total=len(todo), desc="cases", unit="case")
        say = report or tqdm.write
    if part[1] > 1:
        say(f"part {part[0]}/{part[1]}: predicting {len(todo)} of {len(all_cases)} case(s)")
    with closing(ahead):
        for case, prepared in iterator:
            try:
                path, decisions = predict_case(
                    models,
                    case,
                    out_dir,
                    opts,
                    device,
                    prepared=prepared(),
                    record=records[case.case_id],
                )
            except DiskFullError as err:  # every later case would find the disk full too
                raise err.resumed_by(RERUN) from err
            except OSError as err:  # a temporary (probabilities, logits) found no room
                if not is_disk_full(err):
                    raise
                raise disk_full(out_dir / _output_name(case), err).resumed_by(RERUN) from err
            except SegkitError as err:
                failed.append(f"{case.case_id}: {err}")
                say(f"{case.case_id}: FAILED: {err}")
                continue
            written.append(path)
            say(describe_case(case.case_id, decisions))
    share = f"{describe_part(part, cases, len(all_cases))}: " if part[1] > 1 else ""
    if failed:
        done = ", ".join(p.name for p in written) or "none"
        raise DataError(
            f"{share}{len(failed)} of {len(cases)} case(s) failed and were not written "
            f"({'; '.join(failed)}). Written (complete): {done}."
        )
    if share:
        say(f"{share}wrote {len(written)}")
    return written
