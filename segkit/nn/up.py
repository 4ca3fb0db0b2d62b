"""Upsampling to the skip's exact size: transposed conv, interpolation, MedNeXt's up block.

Each takes the skip's spatial size at every call. In eager mode a transposed conv's
output_padding and crop are solved from it in Python (:func:`segkit.shapes.fit_transposed`);
with ``traceable=True`` the same numbers come from integer arithmetic on the size itself,
which ``torch.jit.trace`` and ``torch.export`` keep symbolic, so an exported network stays
exact for every input size (:mod:`segkit.inference.export`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segkit.nn import layers
from segkit.nn.blocks import GRN, BlockContext
from segkit.shapes import Downsample, fit_transposed, up_padding

Size = tuple[int, ...]


class _StaticFit:
    """A transposed conv's padding, output_padding and crop as shape-free tensor ops.

    With padding ``p``, output_padding ``op`` and the one-sided crop ``c`` of the eager
    path, output voxel ``i`` is voxel ``p + i`` of the full (unpadded) transposed
    convolution; voxels past the full output carry only the bias (the output_padding
    region, also the voxels the eager path pads when ``c < 0``). ``p`` is
    :func:`~segkit.shapes.up_padding` for every size (see
    :func:`~segkit.shapes.fit_transposed`), so the output is a fixed-offset slice of the
    skip's length, which the exporters keep symbolic.
    """

    def __init__(self, downs: Sequence[Downsample], kernel: Size) -> None:
        pads, short = [], []
        for down, k in zip(downs, kernel):
            p = up_padding(down, k)
            pads.append(p)
            # an up kernel smaller than the stride leaves up to s − 1 − T voxels past the
            # full output, which carry the bias alone (as the eager path pads them)
            short.append(max(0, -(down.pad_lo + down.pad_hi + k - down.extent - 2 * p)))
        self.stride = tuple(d.stride for d in downs)
        self.pads = tuple(pads)
        self.extra = tuple(s + z for s, z in zip(self.stride, short))

    def apply(
        self,
        x: torch.Tensor,
        skip_size: Sequence[int],
        conv: nn.Module,
        stride: Size,
        groups: int,
        conv_t: Any,
    ) -> torch.Tensor:
        ndim = x.dim() - 2
        y = conv_t(x, conv.weight, None, stride, 0, 0, groups)
        y = F.pad(y, [v for e in reversed(self.extra) for v in (0, e)])
        if conv.bias is not None:
            y = y + conv.bias.view(1, -1, *([1] * ndim))
        for axis in range(ndim):
            size = skip_size[axis]
            y = y.narrow(axis + 2, self.pads[axis], size)
        return y


class UpTransposed(nn.Module):
    """Transposed conv whose output_padding and crop are solved from the skip's size.

    Padding is fixed at build time (:func:`segkit.shapes.up_padding`); the
    remainder of the downsampling is recovered per forward call, so any input
    size comes back exactly. ``groups = in_channels`` makes it depthwise (MedNeXt).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        downs: Sequence[Downsample],
        kernel: Size,
        bias: bool = True,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.downs: tuple[Downsample, ...] = tuple(downs)
        self.kernel = tuple(kernel)
        self.stride = tuple(d.stride for d in downs)
        self.groups = groups
        self.conv = layers.conv_transpose(spatial_dims)(
            in_channels, out_channels, self.kernel, stride=self.stride, bias=bias, groups=groups
        )
        self._fit_cache: dict[tuple[int, ...], tuple] = {}
        self._static = _StaticFit(self.downs, self.kernel)

    def _fit(self, skip: tuple[int, ...]) -> tuple:
        fit = self._fit_cache.get(skip)
        if fit is None:
            fits = [fit_transposed(n, d, u) for n, d, u in zip(skip, self.downs, self.kernel)]
            pad = tuple(f.padding for f in fits)
            op = tuple(f.output_padding for f in fits)
            crop = tuple(f.crop for f in fits)
            fit = self._fit_cache[skip] = (pad, op, crop)
        return fit

    def plan_op(self, in_size: Size, out_size: Size) -> dict[str, Any]:
        pad, op, crop = self._fit(tuple(out_size))
        label = "transposed conv"
        if self.groups > 1:
            label += " (depthwise)"
        elif all(k == 1 for k in self.kernel):
            label = "transposed conv 1×1"
        return {
            "op": label,
            "kernel": self.kernel,
            "stride": self.stride,
            "padding": tuple((p, p) for p in pad),
            "output_padding": op,
            "crop": crop,
            "rf": [("up", k, s) for k, s in zip(self.kernel, self.stride)],
        }

    def forward(
        self, x: torch.Tensor, skip_size: Sequence[int], *, traceable: bool = False
    ) -> torch.Tensor:
        conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[x.dim() - 2]
        if traceable:
            return self._static.apply(x, skip_size, self.conv, self.stride, self.groups, conv_t)
        pad, op, crop = self._fit(tuple(skip_size))
        if all(c >= 0 for c in crop):
            y = conv_t(x, self.conv.weight, self.conv.bias, self.stride, pad, op, self.groups)
        else:  # an up kernel smaller than the stride: voxels past op carry the bias alone
            y = conv_t(x, self.conv.weight, None, self.stride, pad, op, self.groups)
            y = F.pad(y, [p for c in reversed(crop) for p in (0, max(0, -c))])
            if self.conv.bias is not None:
                y = y + self.conv.bias.view(1, -1, *([1] * (y.dim() - 2)))
            crop = tuple(max(0, c) for c in crop)
        if any(crop):  # the end of the axis, one fixed side
            y = y[(slice(None), slice(None), *(slice(0, n - c) for n, c in zip(y.shape[2:], crop)))]
        return y


class UpInterp(nn.Module):
    """Interpolation to the skip's exact size, then a 1×1 conv to the skip's width."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        stride: Size,
        mode: str,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.stride = tuple(stride)
        self.mode = (
            "nearest"
            if mode == "nearest"
            else {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]
        )
        self.conv = layers.conv(spatial_dims)(in_channels, out_channels, 1, bias=bias)

    def plan_op(self, in_size: Size, out_size: Size) -> dict[str, Any]:
        ndim = len(in_size)
        return {
            "op": f"interp ({'nearest' if self.mode == 'nearest' else 'linear'}) + conv 1×1",
            "kernel": (1,) * ndim,
            "stride": self.stride,
            "padding": ((0, 0),) * ndim,
            "rf": [("up", 2 * s, s) for s in self.stride],
        }

    def forward(
        self, x: torch.Tensor, skip_size: Sequence[int], *, traceable: bool = False
    ) -> torch.Tensor:
        # interpolating to the skip's size is shape-free already: ``traceable`` changes nothing
        kw = {} if self.mode == "nearest" else {"align_corners": False}
        return self.conv(F.interpolate(x, size=tuple(skip_size), mode=self.mode, **kw))


class MedNeXtUp(nn.Module):
    """MedNeXt's up block, exact at every size: depthwise transposed conv (stride of the
    level) → norm → 1×1 expansion → act → (GRN) → 1×1 compression, plus a transposed
    1×1 shortcut. Both transposed convs take their output_padding from the skip's size,
    where MedNeXt pads one voxel at the start and works for even sizes only."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        downs: Sequence[Downsample],
        kernel: Size,
        context: BlockContext,
    ) -> None:
        super().__init__()
        ndim = context.spatial_dims
        hidden = context.expansion * in_channels
        bias = context.conv_bias
        self.dw = UpTransposed(
            ndim,
            in_channels,
            in_channels,
            downs=downs,
            kernel=kernel,
            bias=bias,
            groups=in_channels,
        )
        self.norm = context.norm_layer(in_channels)
        self.expand = context.conv(in_channels, hidden, kernel=1, norm=False)
        self.grn = GRN(hidden, ndim) if context.grn else None
        self.compress = context.conv(hidden, out_channels, kernel=1, norm=False, act=False)
        self.shortcut = UpTransposed(
            ndim, in_channels, out_channels, downs=downs, kernel=(1,) * ndim, bias=bias
        )
        self.shortcut.parallel_path = True

    def forward(
        self, x: torch.Tensor, skip_size: Sequence[int], *, traceable: bool = False
    ) -> torch.Tensor:
        y = self.expand(self.norm(self.dw(x, skip_size, traceable=traceable)))
        if self.grn is not None:
            y = self.grn(y)
        return self.compress(y) + self.shortcut(x, skip_size, traceable=traceable)


__all__ = ["MedNeXtUp", "UpInterp", "UpTransposed"]
