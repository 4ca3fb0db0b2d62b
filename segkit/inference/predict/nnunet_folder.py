"""nnU-Net v2 model folders as segkit models: ``segkit predict ckpt=<nnU-Net model folder>``.

A folder nnU-Net's training writes (``dataset.json``, ``plans.json``,
``fold_X/checkpoint_final.pth``; TotalSegmentator's models are such folders) is read without
unpickling anything but tensors and plain values (nnU-Net's checkpoints hold numpy scalars,
allow-listed here; never ``weights_only=False``), and predicted as nnU-Net's
``nnUNetPredictor`` predicts it, step for step:

- **network**: the plans' architecture (PlainConvUNet or ResidualEncoderUNet) as a segkit U-Net,
  axes kept in nnU-Net's transposed order, the checkpoint's weights mapped onto it
  (:mod:`segkit.nn.weights`, the functions the forward-value tests hold against DNA);
- **preprocessing**: nnU-Net's, reproduced bit for bit
  (:class:`~segkit.data.nnunet_preprocess.NnUNetPreprocessor`); where the case is shorter than
  the patch, the engine zero-pads each window, centred, to the patch, as ``pad_nd_image`` pads;
- **sliding window**: the engine with nnU-Net's window placement and Gaussian
  (:mod:`segkit.inference.engine.windows`) at nnU-Net's ``tile_step_size`` 0.5, mirroring over
  the checkpoint's ``inference_allowed_mirroring_axes`` (on unless ``tta=false``; none where
  the checkpoint allows none, as ``*NoMirroring`` trainers and TotalSegmentator's), the folds'
  logits averaged;
- **export**: nnU-Net's (the logits resampled to the cropped shape, argmax or regions, put back
  into the box, back to the file's voxel order).

One difference, on purpose: nnU-Net accumulates windows in float16, segkit in float32, so
segkit's logits are the more precise of the two; ``tests/inference/test_nnunet_folder.py``
states the tolerance this gives and holds labels and Dice against ``nnUNetPredictor`` run live.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from segkit.config import compose
from segkit.data.nnunet_preprocess import NnUNetPreprocessor
from segkit.data.regions import Region
from segkit.errors import ConfigError
from segkit.inference.engine.outputs import SOFTMAX, OutputHead
from segkit.inference.predict.checkpoint import LoadedModel, read_checkpoint
from segkit.nn import UNet
from segkit.nn.weights import WeightMapError, map_dna_plain_conv_unet, map_dna_residual_encoder_unet
from segkit.planner.nnunet_plans import (
    model_from_plans,
    preprocessor_from_plans,
    resolve_configuration,
)
from segkit.spec import UNetSpec

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
TILE_STEP = 0.5
"""nnU-Net's default ``tile_step_size``: the window overlap is ``1 − TILE_STEP``."""
_FOLD = re.compile(r"^fold_(\d+|all)$")
_MAPPERS = {
    "PlainConvUNet": map_dna_plain_conv_unet,
    "ResidualEncoderUNet": map_dna_residual_encoder_unet,
}


def is_nnunet_folder(path: str | Path) -> bool:
    """A folder with ``plans.json``, ``dataset.json`` and at least one ``fold_*`` folder."""
    path = Path(path)
    return (
        path.is_dir()
        and (path / "plans.json").is_file()
        and (path / "dataset.json").is_file()
        and any(p.is_dir() and _FOLD.match(p.name) for p in path.iterdir())
    )


def _numpy_globals() -> list[Any]:
    """The numpy types nnU-Net's checkpoints pickle (``_best_ema`` and logged Dice are numpy
    floats): their reconstructors only rebuild scalars, never run code."""
    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return found


def read_nnunet_checkpoint(path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint's dict, with tensors, plain values and numpy scalars only.

    Raises:
        ConfigError: unreadable, pickled objects beyond those, or no ``network_weights``.
    """
    with torch.serialization.safe_globals(_numpy_globals()):
        ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get("network_weights"), Mapping):
        raise ConfigError(
            f"ckpt={path}: not an nnU-Net checkpoint (no 'network_weights'). Fix: point ckpt= "
            "at an nnU-Net v2 model folder (dataset.json, plans.json, fold_X/checkpoint_final.pth)."
        )
    return ckpt


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"{path}: cannot be read as JSON ({err}). Fix: restore the model folder's file."
        ) from err
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: holds a {type(value).__name__}, not a JSON object.")
    return value


def find_folds(
    folder: Path, folds: Sequence[str | int] | None, checkpoint: str
) -> list[tuple[str, Path]]:
    """``(fold, checkpoint file)`` of the folds to use (None: every fold with the file, as
    nnU-Net's ``auto_detect_available_folds``, ``fold_all`` left out).

    Raises:
        ConfigError: an unknown checkpoint name, a missing fold or none found.
    """
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(
            f"nnunet_checkpoint={checkpoint!r}; allowed: {', '.join(CHECKPOINTS)} "
            f"({', '.join(CHECKPOINTS.values())})"
        )
    name = CHECKPOINTS[checkpoint]
    if folds is None:
        found = sorted(
            (int(m[1]), p / name)
            for p in folder.iterdir()
            if (m := _FOLD.match(p.name)) and m[1] != "all" and (p / name).is_file()
        )
        if not found:
            raise ConfigError(
                f"ckpt={folder}: no fold_N/{name} in this nnU-Net model folder. Fix: "
                "nnunet_checkpoint=best, or nnunet_folds=all for fold_all/."
            )
        return [(str(f), p) for f, p in found]
    out = []
    for fold in folds:
        path = folder / f"fold_{str(fold).strip()}" / name
        if not path.is_file():
            raise ConfigError(
                f"ckpt={folder}: nnunet_folds has {fold} but {path} does not exist. Fix: "
                "choose folds that were trained, or leave nnunet_folds out to use all found."
            )
        out.append((str(fold).strip(), path))
    return out


def _labels(
    dataset: dict[str, Any], source: Path
) -> tuple[OutputHead, dict[int, str], tuple[Region, ...]]:
    """The output head, class names and regions of an nnU-Net ``dataset.json``."""
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise ConfigError(f"{source}: has no 'labels'. Fix: restore the model's dataset.json.")
    regions = {k: v for k, v in labels.items() if isinstance(v, list | tuple)}
    if regions:
        order = dataset.get("regions_class_order")
        if not isinstance(order, list | tuple):
            raise ConfigError(
                f"{source}: region labels but no 'regions_class_order'. Fix: restore the "
                "model's dataset.json."
            )
        found = tuple(Region(str(k), tuple(int(x) for x in v)) for k, v in regions.items())
        return OutputHead.regions([int(v) for v in order]), {0: "background"}, found
    classes = {int(v): str(k) for k, v in labels.items() if k != "ignore"}
    return SOFTMAX, dict(sorted(classes.items())), ()


class SpilledLogits:
    """A case's float32 logits on disk, written tile by tile as the engine hands them out and
    read back one class at a time: nnU-Net's export needs every class of the whole case, and
    a 105-class body CT's are gigabytes (nnU-Net holds them in memory, in float16).

    The file appends each tile's ``(K, *tile)`` block; reading class ``c`` gathers its slice
    of every block. Reads and writes go through the file, never a memory map, so the data
    stays in the page cache, not in the process' resident set. The file is removed on close.
    """

    def __init__(self, path: Path, classes: int, shape: tuple[int, ...]) -> None:
        self.path, self.classes, self.shape = Path(path), int(classes), tuple(shape)
        self._file = open(self.path, "w+b")  # noqa: SIM115 - closed by close()
        self._blocks: list[tuple[tuple[slice, ...], int, tuple[int, ...]]] = []

    def write(self, box: tuple[slice, ...], logits: torch.Tensor) -> None:
        block = np.ascontiguousarray(logits.detach().cpu().numpy(), dtype=np.float32)
        self._file.seek(0, 2)
        self._blocks.append((box, self._file.tell(), block.shape[1:]))
        self._file.write(block.tobytes())

    def channel(self, c: int) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        for box, offset, shape in self._blocks:
            n = int(np.prod(shape))
            self._file.seek(offset + 4 * n * c)
            out[box] = np.frombuffer(self._file.read(4 * n), dtype=np.float32).reshape(shape)
        return out

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class NnUNetInput:
    """The ``preprocessor`` of an nnU-Net model: nnU-Net's preprocessing and export.

    Attributes:
        pre: nnU-Net's preprocessing of the checkpoint's configuration.
        regions_class_order: for a region model, dataset.json's; None for classes.
    """

    pre: NnUNetPreprocessor
    regions_class_order: tuple[int, ...] | None = None

    def preprocess_image(self, files: Sequence[Path]) -> tuple[np.ndarray, dict[str, Any]]:
        """``(C, *S)`` float32 network input in nnU-Net's axis order and the properties the
        export needs. Along an axis shorter than the patch the engine zero-pads each window,
        centred, to the patch, as nnU-Net's ``pad_nd_image`` pads the case (one window spans
        such an axis, so the two give the same logits)."""
        data, _, props = self.pre.preprocess_case(list(files), None)
        return data, props

    def needs_logits(self, props: dict[str, Any]) -> bool:
        """nnU-Net resamples the logits (not the labels) back: whole-case logits are needed
        where the preprocessing resampled."""
        return list(props["shape_after_resampling"]) != list(
            props["shape_after_cropping_and_before_resampling"]
        )

    def invert(self, labels: np.ndarray, props: dict[str, Any]) -> np.ndarray:
        """Labels on the preprocessed grid onto the input's voxel grid (no resampling)."""
        return self.pre.place_labels(labels, props)

    def export_labels(self, logits: SpilledLogits, props: dict[str, Any]) -> np.ndarray:
        """nnU-Net's export of the labels, reading the logits one class at a time."""
        return self.pre.export_labels(
            logits.channel,
            logits.classes,
            props,
            self.regions_class_order,
        )

    def export(
        self, logits: np.ndarray, props: dict[str, Any], *, return_probabilities: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """nnU-Net's export of logits on the preprocessed grid (``NnUNetPreprocessor.export``)."""
        return self.pre.export(
            logits,
            props,
            regions_class_order=self.regions_class_order,
            return_probabilities=return_probabilities,
        )


@dataclass(frozen=True)
class NnUNetFolder:
    """What an nnU-Net model folder says beyond its networks.

    Attributes:
        path: the folder.
        configuration: the checkpoints' configuration (e.g. ``3d_fullres``).
        trainer: the trainer class that wrote them.
        mirror_axes: the checkpoint's ``inference_allowed_mirroring_axes``; ``()`` where it
            allows none (nnU-Net's predictor then never mirrors).
        folds: the folds loaded.
    """

    path: Path
    configuration: str
    trainer: str
    mirror_axes: tuple[int, ...]
    folds: tuple[str, ...]

    def describe(self) -> str:
        folds = ",".join(self.folds)
        return (
            f"nnU-Net model {self.path} ({self.trainer}, {self.configuration}, folds {folds}): "
            f"nnU-Net's preprocessing, tile step {TILE_STEP:g}, Gaussian, folds' logits averaged"
        )


def load_nnunet_folder(
    folder: str | Path,
    *,
    folds: Sequence[str | int] | None = None,
    checkpoint: str = "final",
    device: torch.device | str = "cpu",
) -> tuple[NnUNetFolder, list[LoadedModel]]:
    """The networks of an nnU-Net v2 model folder, one :class:`LoadedModel` per fold.

    Args:
        folder: the model folder (``dataset.json``, ``plans.json``, ``fold_X/``).
        folds: folds to use (``0``, ``1``, ``all``, ...); None: every fold found.
        checkpoint: ``final`` (``checkpoint_final.pth``) or ``best``.
        device: where the networks go.

    Raises:
        ConfigError: a missing file or fold, a checkpoint with pickled objects, a
            configuration or architecture segkit does not reproduce (named, with the fix).
    """
    folder = Path(folder)
    plans = _read_json(folder / "plans.json")
    dataset = _read_json(folder / "dataset.json")
    chosen = find_folds(folder, folds, checkpoint)
    ckpts = [read_nnunet_checkpoint(p) for _, p in chosen]
    first = ckpts[0]
    init = first.get("init_args") if isinstance(first.get("init_args"), Mapping) else {}
    configuration = str(init.get("configuration") or "3d_fullres")
    if "cascade" in configuration:
        raise ConfigError(
            f"ckpt={folder}: configuration {configuration} needs the low-resolution stage's "
            "segmentation as input (nnU-Net's cascade), which segkit does not run. Fix: a "
            "3d_fullres, 3d_lowres or 2d model folder."
        )
    for (fold, path), ck in zip(chosen[1:], ckpts[1:]):
        other = (ck.get("init_args") or {}).get("configuration")
        if other not in (None, configuration):
            raise ConfigError(
                f"{path}: fold {fold} was trained as {other}, fold {chosen[0][0]} as "
                f"{configuration}; they cannot be averaged. Fix: nnunet_folds= of one "
                "configuration."
            )
    cfg = resolve_configuration(plans, configuration, source=str(folder / "plans.json"))
    head, label_names, regions = _labels(dataset, folder / "dataset.json")
    names = dataset.get("channel_names") or dataset.get("modality") or {}
    channels = len(names) or 1
    outputs = len(regions) if head.is_regions else len(label_names)
    patch = tuple(int(v) for v in cfg.get("patch_size") or ())
    ndim = len(patch)
    resenc = None
    if "ResidualEncoderUNet" in str((cfg.get("architecture") or {}).get("network_class_name")):
        resenc = OmegaConf.to_container(compose(["model=resenc"]).model, resolve=True)
    model, cls = model_from_plans(cfg, list(range(ndim)), resenc_family=resenc)
    spec = UNetSpec.from_config(dict(model, in_channels=channels, out_channels=outputs))
    pre = preprocessor_from_plans(plans, configuration)
    # None (a *NoMirroring trainer): nnU-Net's predictor mirrors nothing, whatever it is told
    mirror = first.get("inference_allowed_mirroring_axes")
    mirror_axes = () if mirror is None else tuple(int(a) for a in mirror)
    trainer = str(first.get("trainer_name") or "nnUNetTrainer")
    models = []
    for (_, path), ck in zip(chosen, ckpts):
        net = UNet(spec)
        try:
            net.load_state_dict(_MAPPERS[cls](ck["network_weights"], net))
        except (WeightMapError, RuntimeError, KeyError) as err:
            raise ConfigError(
                f"{path}: its weights do not fit the {cls} that plans.json describes "
                f"(trainer {trainer}: {str(err)[:300]}). segkit builds nnU-Net's standard "
                "networks; a trainer that changes the architecture is not supported."
            ) from err
        models.append(
            LoadedModel(
                net=net.to(device).eval(),
                spec=spec,
                patch_size=patch,
                label_names=label_names,
                preprocessor=NnUNetInput(
                    pre,
                    tuple(head.region_order) if head.is_regions else None,
                ),
                path=path,
                slice_axis=0,
                head=head,
                regions=regions,
                origin="nnunet",
                mirror_axes=mirror_axes,
            )
        )
    info = NnUNetFolder(
        path=folder,
        configuration=configuration,
        trainer=trainer,
        mirror_axes=mirror_axes,
        folds=tuple(f for f, _ in chosen),
    )
    return info, models


__all__ = [
    "CHECKPOINTS",
    "TILE_STEP",
    "NnUNetFolder",
    "NnUNetInput",
    "SpilledLogits",
    "find_folds",
    "is_nnunet_folder",
    "load_nnunet_folder",
    "read_nnunet_checkpoint",
]
