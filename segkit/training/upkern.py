"""Initialising a network from another segkit checkpoint, resizing kernels (UpKern).

MedNeXt's UpKern (Roy et al., MICCAI 2023) trains a kernel-5 network starting from
a trained kernel-3 one: every tensor is copied, and convolution kernels of another
spatial size are resized by trilinear interpolation of the weight tensor (out and
in channels as batch and channel axes). :func:`init_from_checkpoint` does that for
any segkit network, and refuses a partial load: every tensor of the network must
come from the checkpoint and every tensor of the checkpoint must be used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from segkit.errors import ConfigError
from segkit.inference.checkpoint import NET_ATTRIBUTE, network_weights, read_checkpoint

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


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


def _axes(shape: torch.Size) -> str:
    dims = tuple(shape)
    return str(dims[0]) if len(set(dims)) == 1 else "×".join(map(str, dims))


def init_from_checkpoint(net: torch.nn.Module, path: str | Path) -> str:
    """Copy every tensor of a segkit checkpoint into ``net``, resizing conv kernels.

    Tensors match by name (the network's keys of the checkpoint's ``state_dict``,
    :func:`~segkit.inference.checkpoint.network_weights`) and shape; a conv kernel
    whose spatial size differs is resized as UpKern does (trilinear in 3D, bilinear
    in 2D).

    Args:
        net: the network to initialise (in place).
        path: a checkpoint written by segkit's training (read weights-only).

    Returns:
        A one-line summary, e.g. ``"copied 40 tensors, resized 18 kernels 3→5"``.

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
    target = net.state_dict()
    problems: list[str] = []
    loaded: dict[str, torch.Tensor] = {}
    resized: dict[str, int] = {}
    for name, dst in target.items():
        value = src.get(name)
        if not isinstance(value, torch.Tensor):
            problems.append(f"{name} {tuple(dst.shape)}: not in the checkpoint")
        elif value.shape == dst.shape:
            loaded[name] = value.to(dst.dtype)
        elif _resizable(value, dst):
            loaded[name] = resize_kernel(value, tuple(dst.shape[2:])).to(dst.dtype)
            how = f"{_axes(value.shape[2:])}→{_axes(dst.shape[2:])}"
            resized[how] = resized.get(how, 0) + 1
        else:
            problems.append(
                f"{name}: checkpoint {tuple(value.shape)} vs network {tuple(dst.shape)}"
            )
    problems += [
        f"{name} {tuple(getattr(v, 'shape', ()))}: in the checkpoint, not in the network"
        for name, v in src.items()
        if name not in target
    ]
    if problems:
        raise ConfigError(
            f"init.from_checkpoint={path}: {len(problems)} tensor(s) cannot be mapped (only "
            "conv kernels may differ, in spatial size):\n  " + "\n  ".join(problems) + "\n"
            "Fix: initialise from a network of the same architecture except kernel_size."
        )
    net.load_state_dict(loaded, strict=True)
    n_resized = sum(resized.values())
    summary = f"copied {len(loaded) - n_resized} tensors"
    if resized:
        summary += ", resized " + ", ".join(f"{n} kernels {how}" for how, n in resized.items())
    return summary


__all__ = ["init_from_checkpoint", "resize_kernel"]
