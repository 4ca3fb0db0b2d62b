"""The references built live: helpers shared by the tests that compare segkit with them."""

from __future__ import annotations

import pydoc
from collections import Counter

from torch import nn


def network_from_plans(arch: dict, in_channels: int, classes: int) -> nn.Module:
    """nnunetv2's ``get_network_from_plans`` for an ``architecture`` entry of a plans file:
    locate the class and the ops it names as strings, build with every deep supervision head."""
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    cls = pydoc.locate(arch["network_class_name"])
    return cls(input_channels=in_channels, num_classes=classes, deep_supervision=True, **kwargs)


def param_shapes(net: nn.Module, *, reverse_axes: bool = False) -> Counter:
    """Parameter shapes in (out, in, *kernel) layout: a transposed conv stores (in, out, ...),
    and MONAI's 1×1 output head is a transposed conv where segkit's is a conv.
    ``reverse_axes``: kernel axes reversed (nnU-Net's plans list axes z, y, x; segkit x, y, z)."""
    shapes: Counter = Counter()
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            shape = tuple(p.shape)
            if name == "weight" and isinstance(module, nn.modules.conv._ConvTransposeNd):
                shape = (shape[1], shape[0], *shape[2:])
            if reverse_axes:
                shape = (*shape[:2], *shape[:1:-1])
            shapes[shape] += 1
    return shapes


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
