"""Safe checkpoint loading: tensors and plain values only, never arbitrary objects.

A Lightning checkpoint written by :class:`~segkit.training.module.SegModule`
holds everything prediction needs in plain Python values: the normalised model
config, the patch size, the label names and the preprocessing settings
(``hyper_parameters``), plus the ``state_dict``. It is read with
``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and
builtin containers, so a malicious pickle cannot run code; the network is then
rebuilt from the config and the weights are loaded into it.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segkit.data.preprocess import Preprocessor
from segkit.data.regions import Region
from segkit.defaults import SLICE_AXIS
from segkit.errors import ConfigError, SegkitError
from segkit.inference.engine.outputs import SOFTMAX, OutputHead
from segkit.nn import UNet
from segkit.spec import UNetSpec

# The network's weights in a checkpoint's ``state_dict``: SegModule keeps it as ``self.net``.
NET_ATTRIBUTE = "net"
# Where training stores the inference setting it measured on the validation fold.
CALIBRATION_KEY = "segkit_inference"


def network_weights(state: Mapping[str, Any]) -> dict[str, Any]:
    """The network's tensors of a checkpoint's ``state_dict``, keyed as ``UNet.state_dict()``."""
    prefix = NET_ATTRIBUTE + "."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class LoadedModel:
    """A trained network and what it was trained with, rebuilt from a checkpoint.

    Attributes:
        net: the U-Net in eval mode.
        spec: its normalised architecture.
        patch_size: the training patch (the sliding-window size).
        label_names: class index → name, background included.
        preprocessor: the preprocessing settings, None if the checkpoint has none.
        path: the checkpoint file.
        slice_axis: for 2D models, the volume axis slices are taken across.
        calibration: the sliding-window setting measured at the end of training
            (``overlap``, ``window_scale``, ``dice_mean``, the measured ``rows``), None
            if the checkpoint has none.
        head: what the output channels mean (softmax classes or sigmoid regions;
            ``hyper_parameters.output_head``, softmax if absent).
        regions: for a region head, each output channel's region (name and label values,
            ``hyper_parameters.regions``); empty for softmax classes.
        origin: ``segkit`` (a segkit checkpoint) or ``nnunet`` (a fold of an nnU-Net model
            folder, :mod:`segkit.inference.predict.nnunet_folder`: predicted as nnU-Net does).
        mirror_axes: the axes test-time mirroring may flip (None: every spatial axis).
    """

    net: UNet
    spec: UNetSpec
    patch_size: tuple[int, ...]
    label_names: dict[int, str]
    preprocessor: Preprocessor | None
    path: Path
    slice_axis: int = SLICE_AXIS
    calibration: dict[str, Any] | None = None
    head: OutputHead = SOFTMAX
    regions: tuple[Region, ...] = ()
    origin: str = "segkit"
    mirror_axes: tuple[int, ...] | None = None

    def output_names(self, channels: int) -> list[str]:
        """The name of each output channel: its region, or its class."""
        if self.head.is_regions and len(self.regions) == channels:
            return [r.name for r in self.regions]
        if self.head.is_regions:
            return [f"region{i}" for i in range(channels)]
        return [self.label_names.get(i, f"class{i}") for i in range(channels)]


def _not_segkit(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"ckpt={path}: not a segkit checkpoint ({why}). Fix: pass a checkpoint written by "
        "`python train.py`, e.g. RUN/checkpoints/best.ckpt or RUN/checkpoints/last.ckpt."
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict, read with ``weights_only=True`` (no code runs).

    Raises:
        ConfigError: missing, truncated, not a checkpoint, or holding pickled
            objects other than tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"ckpt={path}: no such file. Fix: point ckpt= at RUN/checkpoints/best.ckpt "
            "(RUN is the training run's output directory)."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines()]
        detail = next(
            (
                ln
                for ln in lines
                if "GLOBAL" in ln.upper() and ("unsupported" in ln.lower() or "blocked" in ln)
            ),
            type(err).__name__,
        )
        raise ConfigError(
            f"ckpt={path}: refused to load: the file contains pickled objects other than "
            f"tensors and plain values ({detail}). segkit never unpickles arbitrary objects "
            "because that can run code. Fix: use a checkpoint written by segkit's training "
            "from a source you trust."
        ) from err
    except Exception as err:  # noqa: BLE001 - damaged bytes break torch's reader many ways
        raise ConfigError(
            f"ckpt={path}: cannot be read ({type(err).__name__}: {str(err)[:200]}). The file "
            "is probably truncated or corrupt (an interrupted copy or a run killed while "
            "saving). Fix: copy it again or use another checkpoint of the run."
        ) from err
    if not isinstance(ckpt, Mapping):
        raise _not_segkit(path, f"it holds a {type(ckpt).__name__}, not a dict")
    return dict(ckpt)


def _targets(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        found = [str(value["_target_"])] if "_target_" in value else []
        return found + [t for v in value.values() for t in _targets(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _targets(v)]
    return []


def _check_targets(path: Path, model: Any, trusted: Sequence[str]) -> None:
    """A checkpoint may name user block classes; importing one runs its module's code.

    segkit's own classes are always allowed; any other needs the user's explicit trust.
    """
    foreign = sorted(
        {t for t in _targets(model) if not t.startswith("segkit.") and t not in set(trusted)}
    )
    if foreign:
        raise ConfigError(
            f"ckpt={path}: its model names class(es) outside segkit ({', '.join(foreign)}); "
            "building it would import and run that code. Fix: if you trust the checkpoint "
            f"and the code, pass trust={','.join(foreign)} (segkit predict/export) or "
            "trusted_targets=[...] (load_model)."
        )


def load_model(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    trusted_targets: Sequence[str] = (),
) -> LoadedModel:
    """Rebuilds the trained U-Net and its settings from a checkpoint alone.

    Args:
        path: a ``.ckpt`` written by segkit's training.
        device: where the network is put.
        trusted_targets: user block classes (``pkg.module.Class``) the checkpoint's model
            may import; segkit's own are always allowed, nothing else is imported.

    Raises:
        ConfigError: the file is unsafe, unreadable or not a segkit checkpoint.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    hp = ckpt.get("hyper_parameters")
    state = ckpt.get("state_dict")
    if not isinstance(hp, Mapping) or not isinstance(state, Mapping):
        raise _not_segkit(path, "no 'hyper_parameters' and 'state_dict' entries")
    missing = [k for k in ("model", "patch_size") if k not in hp]
    if missing:
        raise _not_segkit(path, f"hyper_parameters lack {', '.join(missing)}")
    _check_targets(path, hp["model"], trusted_targets)
    try:
        spec = UNetSpec.from_config(dict(hp["model"]))
        net = UNet(spec)
    except (SegkitError, TypeError, ValueError, RuntimeError, MemoryError) as err:
        raise _not_segkit(path, f"its model config is invalid: {err}") from err
    weights = network_weights(state)
    if not weights:
        raise _not_segkit(path, f"its state_dict has no '{NET_ATTRIBUTE}.*' weights")
    try:
        result = net.load_state_dict(weights, strict=False)
    except (RuntimeError, TypeError) as err:  # a tensor of another shape, or no tensor
        raise _not_segkit(path, f"weights do not fit the model config: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise _not_segkit(
            path,
            f"weights do not fit the model config (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})",
        )
    # the values a damaged or foreign checkpoint holds are refused by name
    try:
        pre = hp.get("preprocessor")
        preprocessor = Preprocessor.from_dict(dict(pre)) if pre else None
        names = hp.get("label_names") or {i: f"class{i}" for i in range(spec.out_channels)}
        label_names = {int(k): str(v) for k, v in names.items()}
        patch_size = tuple(int(v) for v in hp["patch_size"])
        slice_axis = int(hp.get("slice_axis", SLICE_AXIS))
    except (SegkitError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise _not_segkit(path, f"its hyper_parameters are invalid ({err!r})") from err
    if len(patch_size) != spec.spatial_dims or min(patch_size) < 1 or slice_axis not in (0, 1, 2):
        raise _not_segkit(
            path, f"hyper_parameters patch_size={list(patch_size)}, slice_axis={slice_axis}"
        )
    return LoadedModel(
        net=net.to(device).eval(),
        spec=spec,
        patch_size=patch_size,
        label_names=label_names,
        preprocessor=preprocessor,
        path=path,
        slice_axis=slice_axis,
        calibration=_calibration(ckpt.get(CALIBRATION_KEY)),
        head=_head(path, hp.get("output_head")),
        regions=tuple(
            Region.from_dict({"name": f"region{i}", **r})
            for i, r in enumerate(hp.get("regions") or ())
            if isinstance(r, Mapping) and isinstance(r.get("labels"), Sequence)
        ),
    )


def _head(path: Path, value: Any) -> OutputHead:
    if value and not isinstance(value, Mapping):
        raise _not_segkit(path, f"hyper_parameters.output_head is {type(value).__name__}")
    try:
        return OutputHead.from_dict(value)
    except (SegkitError, TypeError, ValueError) as err:
        raise _not_segkit(path, f"hyper_parameters.output_head is invalid: {err}") from err


def _calibration(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    try:
        overlap, scale = float(value["overlap"]), float(value["window_scale"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (0 <= overlap < 1 and scale >= 1):
        return None
    return {**dict(value), "overlap": overlap, "window_scale": scale}
