"""Predict NIfTI cases with a trained checkpoint and write label maps on the input grid.

Flow per case: the checkpoint's saved preprocessing (reorient, crop, resample,
normalise) → whole-volume or sliding-window logits → argmax → inversion
(resample back, un-crop, undo reorientation) → one NIfTI with the input's
shape, affine and header, written atomically (temporary name, then rename).

Every input is checked before the first prediction (files exist, channel
count matches the model, output directory writable), so a bad input fails
with one clear message and leaves no output behind.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from segkit.data.io import NIFTI_SUFFIXES, atomic_path, strip_nifti_suffix, write_nifti
from segkit.errors import ConfigError, DataError
from segkit.inference.checkpoint import LoadedModel, load_model
from segkit.inference.engine import MODES, predict_volume

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
        mode: ``auto`` | ``whole`` | ``sliding``.
        overlap: sliding-window overlap in [0, 1).
        tta: mirroring test-time augmentation.
        save_probabilities: also write ``{case}.npz`` with class probabilities.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        sw_batch_size: windows per forward call.
        progress: progress bars over cases and windows.
    """

    mode: str = "auto"
    overlap: float = 0.5
    tta: bool = False
    save_probabilities: bool = False
    device: str = "auto"
    sw_batch_size: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: got {self.mode!r}; allowed: {', '.join(MODES)}")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"overlap: got {self.overlap}; expected 0 <= overlap < 1")
        if self.sw_batch_size < 1:
            raise ConfigError(f"sw_batch_size: got {self.sw_batch_size}; expected >= 1")


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


def _logits(
    model: LoadedModel, image: np.ndarray, opts: PredictOptions, device: torch.device
) -> torch.Tensor:
    x = torch.from_numpy(image).to(device)
    kwargs = dict(
        mode=opts.mode,
        overlap=opts.overlap,
        sw_batch_size=opts.sw_batch_size,
        tta=opts.tta,
        progress=opts.progress,
    )
    if model.spec.spatial_dims not in (2, 3):
        raise ConfigError(f"prediction supports 2D and 3D models, not {model.spec.spatial_dims}D")
    logits = predict_volume(
        model.net, x[None], window=model.patch_size, slice_axis=model.slice_axis, **kwargs
    )
    return logits[0]


def predict_case(
    model: LoadedModel,
    case: InputCase,
    output_dir: Path,
    opts: PredictOptions,
    device: torch.device,
) -> Path:
    """Predicts one case and writes ``output_dir/{case_id}.nii.gz`` (and ``.npz``)."""
    pre = model.preprocessor
    image, props = pre.preprocess_image(case.images)
    logits = _logits(model, image, opts, device)
    seg = logits.argmax(0).to(torch.uint8 if logits.shape[0] <= 256 else torch.int16)
    seg_orig = pre.invert(seg.cpu().numpy(), props)
    out = output_dir / _output_name(case)
    probs_orig = None
    if opts.save_probabilities:
        probs = torch.softmax(logits, dim=0).cpu().numpy()
        probs_orig = pre.invert(probs, props).astype(np.float16)
    write_nifti(out, seg_orig, case.images[0])
    if probs_orig is not None:
        with atomic_path(output_dir / f"{case.case_id}.npz", suffix=".npz") as tmp:
            np.savez_compressed(
                tmp,
                probabilities=probs_orig,
                label_names=np.array(
                    [model.label_names.get(i, f"class{i}") for i in range(probs_orig.shape[0])]
                ),
            )
    return out


def predict(
    *,
    ckpt: str | Path,
    input: str | Path,
    output: str | Path,
    options: PredictOptions | None = None,
) -> list[Path]:
    """Predicts every case under ``input`` and writes one label NIfTI per case.

    Args:
        ckpt: a checkpoint written by segkit's training (nothing else is needed).
        input: a NIfTI file, a folder of them, or a dataset folder (its imagesTs/).
        output: the folder to write ``{case}.nii.gz`` into (created if missing).
        options: mode, overlap, TTA, device, ...

    Returns:
        The written label files.

    Raises:
        ConfigError: bad checkpoint, options or output folder.
        DataError: no or bad input files, channel mismatch.
    """
    opts = options or PredictOptions()
    device = resolve_device(opts.device)
    model = load_model(ckpt, device=device)
    if model.preprocessor is None:
        raise ConfigError(
            f"ckpt={ckpt}: holds no preprocessing settings (hyper_parameters.preprocessor), "
            "so inputs cannot be prepared as in training. Fix: use a checkpoint written by "
            "`python train.py` with a segkit data module."
        )
    channels = model.spec.in_channels
    cases = find_cases(input, num_channels=channels)
    for case in cases:
        check_case(case, num_channels=channels)
    names = [_output_name(c) for c in cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"input={input}: several inputs would be written as {dupes[:5]}.")
    out_dir = check_output_dir(output)
    written = []
    iterator = cases
    if opts.progress:
        from tqdm.auto import tqdm

        iterator = tqdm(cases, desc="cases", unit="case")
    for case in iterator:
        written.append(predict_case(model, case, out_dir, opts, device))
    return written
