"""Explicit layer stacks (the plan's :func:`~segkit.plan.plan_layers`) as torch modules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import nn

from segkit.nn import layers
from segkit.plan import plan_layers
from segkit.shapes import to_tuple


class _Pad(nn.Module):
    def __init__(self, pads: list[int], value: float = 0.0) -> None:
        super().__init__()
        self.pads = pads
        self.value = value

    def forward(self, x):
        return F.pad(x, self.pads, value=self.value)


def build_stack(
    input_size: Sequence[int], in_channels: int, specs: Sequence[Mapping[str, Any]]
) -> nn.Sequential:
    """An ``nn.Sequential`` with exactly the layers :func:`plan_layers` describes.

    Every argument the plan reads (kernel, stride, padding, dilation,
    output_padding, channels) is taken from the plan's rows, so the two agree.
    Asymmetric padding is an explicit ``F.pad`` (``-inf`` before a max-pool, zeros
    otherwise, as PyTorch's own padding of each op).
    """
    plan = plan_layers(input_size, in_channels, specs)
    ndim = len(input_size)
    mods: list[nn.Module] = []
    for row, spec in zip(plan.rows, specs):
        dil = to_tuple(spec.get("dilation", 1), ndim)
        if row.op == "transposed":
            mods.append(
                layers.conv_transpose(ndim)(
                    row.in_channels,
                    row.out_channels,
                    row.kernel,
                    row.stride,
                    padding=tuple(lo for lo, _ in row.padding),
                    output_padding=row.output_padding,
                    dilation=dil,
                )
            )
            continue
        if any(lo != hi for lo, hi in row.padding):
            value = float("-inf") if row.op == "maxpool" else 0.0
            mods.append(_Pad([p for lo_hi in reversed(row.padding) for p in lo_hi], value))
            pad: tuple[int, ...] | int = 0
        else:
            pad = tuple(lo for lo, _ in row.padding)
        if row.op == "conv":
            mods.append(
                layers.conv(ndim)(
                    row.in_channels,
                    row.out_channels,
                    row.kernel,
                    row.stride,
                    padding=pad,
                    dilation=dil,
                )
            )
        else:
            mods.append(layers.pool(row.op, ndim, row.kernel, row.stride, pad, dilation=dil))
    return nn.Sequential(*mods)
