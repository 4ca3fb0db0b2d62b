"""Initialising a network from another segkit checkpoint: UpKern and fine-tuning across tasks.

MedNeXt's UpKern (Roy et al., MICCAI 2023) trains a kernel-5 network starting from
a trained kernel-3 one: every tensor is copied, and convolution kernels of another
spatial size are resized by trilinear interpolation of the weight tensor (out and
in channels as batch and channel axes). :func:`map_checkpoint` does that for any
segkit network, and also maps the two differences fine-tuning on another task brings
(nnU-Net #2252, #2820):

- a segmentation head (``heads.*``) for another number of classes keeps the network's
  fresh initialisation;
- a tensor that reads the network input (the first conv of ``encoder.0``: stem, first
  conv, residual shortcut) for another number of input channels gets the checkpoint's
  weights averaged over its old input channels, replicated over the new ones and scaled
  by ``old_C / new_C`` (:func:`average_input_channels`).

Anything else that does not fit is an error listing every such tensor: never a silent
partial load. Every tensor's fate is in the returned :class:`InitReport`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from segkit.errors import ConfigError
from segkit.inference.predict.checkpoint import NET_ATTRIBUTE, network_weights, read_checkpoint

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
COPIED = "copied"
FREEZE_CHOICES = ("none", "encoder")


def _resizable(src: torch.Tensor, dst: torch.Tensor) -> bool:
    """A conv kernel of another spatial size: same channel axes, 1-3 spatial axes."""
    return (
        src.dim() == dst.dim()
        and dst.dim() - 2 in _MODES
        and src.shape[:2] == dst.shape[:2]
        and src.shape[2:] != dst.shape[2:]
        and src.is_floating_point()
    )


def resize_kernel(weight: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``weight`` (out, in, *k) resized to spatial ``size`` by (tri/bi)linear interpolation."""
    mode = _MODES[weight.dim() - 2]
    return F.interpolate(weight.float(), size=size, mode=mode, align_corners=False).to(weight)


def average_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """``weight`` (out, old_C, *k) → (out, ``channels``, *k): every new input channel gets
    the mean over the old ones times ``old_C / channels``.

    The scale keeps the activation: for an input whose channels all carry the same
    signal x, the new conv gives ``channels · (Σ_j w_j / channels) · x = Σ_j w_j · x``,
    what the old conv gave. (nnU-Net users replicate or average by hand; plain
    replication without the scale would multiply the first activation by new/old.)
    """
    old = weight.shape[1]
    mean = weight.float().mean(dim=1, keepdim=True) * (old / channels)
    return mean.expand(-1, channels, *weight.shape[2:]).contiguous().to(weight)


def _axes(shape: torch.Size) -> str:
    dims = tuple(shape)
    return str(dims[0]) if len(set(dims)) == 1 else "×".join(map(str, dims))


def _is_head_classes(name: str, src: torch.Tensor, dst: torch.Tensor, classes: int | None) -> bool:
    """A head whose only difference is its output-class axis (dim 0)."""
    return (
        name.startswith("heads.")
        and src.dim() == dst.dim() >= 1
        and src.shape[1:] == dst.shape[1:]
        and src.shape[0] != dst.shape[0]
        and (classes is None or dst.shape[0] == classes)
    )


def _is_input_conv(
    name: str, src: torch.Tensor, dst: torch.Tensor, old: int | None, new: int | None
) -> bool:
    """A conv of the first stage whose input-channel axis is the network input's and differs.

    Only ``encoder.0`` reads the network input; deeper convs see the first stage's
    channels, so a mismatch there is a different architecture and stays an error.
    """
    return (
        new is not None
        and name.startswith("encoder.0.")
        and src.dim() == dst.dim() >= 3
        and dst.dim() - 2 in _MODES
        and src.is_floating_point()
        and src.shape[0] == dst.shape[0]
        and src.shape[1] != dst.shape[1]
        and dst.shape[1] == new
        and (old is None or src.shape[1] == old)
    )


@dataclass(frozen=True)
class InitReport:
    """What :func:`map_checkpoint` did with every tensor of the network.

    Attributes:
        path: the checkpoint.
        actions: ``(tensor name, what was done)`` in the network's order; what was done
            is ``"copied"``, ``"kernel resized 3→5"``, ``"input channels averaged 1→2"``
            (possibly with a kernel resize) or ``"re-initialised (classes 4→2)"``.
    """

    path: str
    actions: tuple[tuple[str, str], ...]

    def of(self, action: str) -> list[str]:
        """Names of the tensors whose action starts with ``action``."""
        return [n for n, a in self.actions if a.startswith(action)]

    def summary(self) -> str:
        """One line, e.g. ``"copied 40 tensors, resized 18 kernels 3→5"``."""
        resized: dict[str, int] = {}
        for _, action in self.actions:
            for part in action.split(", "):
                if part.startswith("kernel resized "):
                    how = part.removeprefix("kernel resized ")
                    resized[how] = resized.get(how, 0) + 1
        text = f"copied {len(self.of(COPIED))} tensors"
        if resized:
            text += ", resized " + ", ".join(f"{n} kernels {how}" for how, n in resized.items())
        averaged = self.of("input channels averaged")
        if averaged:
            text += f", averaged the input channels of {_tensors(len(averaged))}"
        fresh = self.of("re-initialised")
        if fresh:
            text += f", re-initialised {_tensors(len(fresh))} of heads (another number of classes)"
        return text

    def listing(self) -> str:
        """One line per tensor: name, then what was done."""
        width = max((len(n) for n, _ in self.actions), default=0)
        return "\n".join(f"  {n:<{width}}  {a}" for n, a in self.actions)


def _tensors(n: int) -> str:
    return f"{n} tensor" + ("" if n == 1 else "s")


def _spec_value(obj: object, key: str) -> int | None:
    value = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
    return int(value) if isinstance(value, int) else None


def map_checkpoint(net: torch.nn.Module, path: str | Path) -> InitReport:
    """Initialise ``net`` (in place) from a segkit checkpoint, mapping what fits.

    Tensors match by name (the network's keys of the checkpoint's ``state_dict``,
    :func:`~segkit.inference.predict.checkpoint.network_weights`). Same shape: copied. A conv
    kernel of another spatial size: resized as UpKern does (trilinear in 3D, bilinear
    in 2D). A head (``heads.*``) for another number of classes: the network's own
    initialisation is kept. A first-stage conv for another number of input channels:
    :func:`average_input_channels`.

    Args:
        net: the network to initialise (in place; untouched when this raises).
        path: a checkpoint written by segkit's training (read weights-only).

    Returns:
        What was done with every tensor.

    Raises:
        ConfigError: the file is not a segkit checkpoint, or some tensors cannot be
            mapped (missing, unused, or of another shape) — all of them listed.
    """
    ckpt = read_checkpoint(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise ConfigError(f"init.from_checkpoint={path}: no 'state_dict' in the checkpoint")
    src = network_weights(state)
    if not src:
        raise ConfigError(
            f"init.from_checkpoint={path}: the checkpoint has no '{NET_ATTRIBUTE}.*' weights; "
            "pass a checkpoint written by segkit's training (RUN/checkpoints/best.ckpt)"
        )
    spec = getattr(net, "spec", None)
    classes, new_in = _spec_value(spec, "out_channels"), _spec_value(spec, "in_channels")
    old_model = (ckpt.get("hyper_parameters") or {}).get("model")
    old_in = _spec_value(old_model, "in_channels")
    target = net.state_dict()
    problems: list[str] = []
    loaded: dict[str, torch.Tensor] = {}
    actions: list[tuple[str, str]] = []
    for name, dst in target.items():
        value = src.get(name)
        if not isinstance(value, torch.Tensor):
            problems.append(f"{name} {tuple(dst.shape)}: not in the checkpoint")
            continue
        done: list[str] = []
        if _is_head_classes(name, value, dst, classes):
            loaded[name] = dst
            actions.append((name, f"re-initialised (classes {value.shape[0]}→{dst.shape[0]})"))
            continue
        if _is_input_conv(name, value, dst, old_in, new_in):
            done.append(f"input channels averaged {value.shape[1]}→{dst.shape[1]}")
            value = average_input_channels(value, dst.shape[1])
        if value.shape != dst.shape and _resizable(value, dst):
            done.append(f"kernel resized {_axes(value.shape[2:])}→{_axes(dst.shape[2:])}")
            value = resize_kernel(value, tuple(dst.shape[2:]))
        if value.shape != dst.shape:
            problems.append(
                f"{name}: checkpoint {tuple(src[name].shape)} vs network {tuple(dst.shape)}"
            )
            continue
        loaded[name] = value.to(dst.dtype)
        actions.append((name, ", ".join(done) or COPIED))
    problems += [
        f"{name} {tuple(getattr(v, 'shape', ()))}: in the checkpoint, not in the network"
        for name, v in src.items()
        if name not in target
    ]
    if problems:
        raise ConfigError(
            f"init.from_checkpoint={path}: {len(problems)} tensor(s) cannot be mapped (only "
            "conv kernels may differ in spatial size, heads (heads.*) in the number of "
            "classes, and the first stage's convs in the number of input channels):\n  "
            + "\n  ".join(problems)
            + "\nFix: initialise from a network of the same architecture (depth, channels, "
            "blocks) except kernel_size, out_channels and in_channels."
        )
    net.load_state_dict(loaded, strict=True)
    return InitReport(path=str(path), actions=tuple(actions))


def init_from_checkpoint(net: torch.nn.Module, path: str | Path) -> str:
    """:func:`map_checkpoint`, returning its one-line summary.

    Returns:
        e.g. ``"copied 40 tensors, resized 18 kernels 3→5"``.
    """
    return map_checkpoint(net, path).summary()


def freeze(net: torch.nn.Module, part: str | None) -> str:
    """Stop gradients to ``part`` of ``net`` (``init.freeze``): ``"encoder"`` or ``"none"``.

    Only parameters are frozen (``requires_grad=False``, so optimizers skip them);
    a BatchNorm's running statistics in train mode still update.

    Returns:
        A one-line summary, e.g. ``"froze 24 encoder parameters (12,345 values)"``.

    Raises:
        ConfigError: an unknown ``part``.
    """
    choice = "none" if part is None else str(part)
    if choice not in FREEZE_CHOICES:
        raise ConfigError(
            f"init.freeze={part!r}: unknown; choose one of {', '.join(FREEZE_CHOICES)} (or null)"
        )
    if choice == "none":
        return "froze nothing"
    params = list(getattr(net, choice).parameters())
    for p in params:
        p.requires_grad_(False)
    return f"froze {len(params)} {choice} parameters ({sum(p.numel() for p in params):,} values)"


__all__ = [
    "InitReport",
    "average_input_channels",
    "freeze",
    "init_from_checkpoint",
    "map_checkpoint",
    "resize_kernel",
]
