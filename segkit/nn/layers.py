"""Layer factories keyed by name and spatial dimensionality (one registry each)."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from segkit import registry
from segkit.spec import Choice, group_count

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_DROPOUT = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}
_POOL = {
    "maxpool": {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d},
    "avgpool": {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d},
}


def conv(ndim: int) -> type[nn.Module]:
    return _CONV[ndim]


def conv_transpose(ndim: int) -> type[nn.Module]:
    return _CONV_T[ndim]


def pool(
    name: str,
    ndim: int,
    kernel: tuple[int, ...],
    stride: tuple[int, ...] | None = None,
    padding: tuple[int, ...] | int = 0,
    *,
    dilation: tuple[int, ...] | int = 1,
    ceil_mode: bool = False,
) -> nn.Module:
    """Max or average pooling; ``ceil_mode`` averages only the voxels inside the input."""
    stride = kernel if stride is None else stride
    if name == "maxpool":
        return _POOL[name][ndim](kernel, stride, padding, dilation=dilation, ceil_mode=ceil_mode)
    if dilation not in (1, (1,) * ndim):
        raise ValueError("average pooling has no dilation")
    return _POOL[name][ndim](
        kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=not ceil_mode
    )


def dropout(p: float, ndim: int) -> nn.Module:
    return _DROPOUT[ndim](p) if p > 0 else nn.Identity()


def norm(choice: Choice, ndim: int, channels: int) -> nn.Module:
    name, kwargs = choice[0], dict(choice[1])
    if name == "instance":
        cls = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[ndim]
        return cls(channels, **{"affine": True, "eps": 1e-5, **kwargs})
    if name == "batch":
        cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[ndim]
        return cls(channels, **kwargs)
    if name == "group":
        groups = group_count(channels, kwargs.pop("num_groups", 8))
        return nn.GroupNorm(groups, channels, **kwargs)
    return nn.Identity()


def resolve(path: str) -> Any:
    """The object a dotted path names (``torch.nn.ReLU``, ``segkit.nn.blocks.PlainBlock``)."""
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def act(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The activation registered as ``name`` (:data:`segkit.registry.ACTIVATIONS`)."""
    return resolve(registry.ACTIVATIONS[name][0])(**kwargs)
