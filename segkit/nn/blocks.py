"""Building blocks of the U-Net. Padding comes from the spec; nothing here guesses sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.nn import layers
from segkit.shapes import Downsample, fit_transposed
from segkit.spec import UNetSpec


def _f_pad(pads: Sequence[tuple[int, int]]) -> list[int]:
    """``(lo, hi)`` per axis → F.pad's last-axis-first flat list."""
    return [p for lo_hi in reversed(pads) for p in lo_hi]


class ConvNormAct(nn.Module):
    """conv → norm → (dropout) → act, with "same" padding (asymmetric when needed)."""

    def __init__(
        self,
        spec: UNetSpec,
        level: int,
        cin: int,
        cout: int,
        stride: Sequence[int],
        *,
        activate: bool = True,
    ) -> None:
        super().__init__()
        ndim = spec.spatial_dims
        pads = spec.conv_padding(level)
        symmetric = all(lo == hi for lo, hi in pads)
        # Asymmetric (even-kernel) padding goes through F.pad; symmetric stays in the conv.
        self.pad = None if symmetric else _f_pad(pads)
        self.conv = layers.conv(ndim)(
            cin,
            cout,
            spec.kernel_size[level],
            stride=tuple(stride),
            padding=tuple(lo for lo, _ in pads) if symmetric else 0,
            dilation=spec.dilation[level],
            bias=spec.conv_bias,
        )
        self.norm = layers.norm(spec.norm, ndim, cout)
        self.drop = layers.dropout(spec.dropout, ndim) if activate else nn.Identity()
        self.act = layers.act(spec.act[0], spec.act_kwargs()) if activate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.act(self.drop(self.norm(self.conv(x))))


class PlainBlock(nn.Module):
    """``n`` ConvNormAct layers; the first carries the stage's stride."""

    def __init__(
        self, spec: UNetSpec, level: int, cin: int, cout: int, n: int, stride: Sequence[int]
    ) -> None:
        super().__init__()
        ones = (1,) * spec.spatial_dims
        self.convs = nn.ModuleList(
            ConvNormAct(spec, level, cin if j == 0 else cout, cout, stride if j == 0 else ones)
            for j in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.convs:
            x = layer(x)
        return x


class ResidualBlock(PlainBlock):
    """Plain block whose last conv skips its activation, plus a shortcut, then act.

    A strided shortcut is a 1×1 conv with the same stride: it yields ``ceil(S/s)``
    like the main path's "same"-padded conv (a floor average-pool would not).
    """

    def __init__(
        self, spec: UNetSpec, level: int, cin: int, cout: int, n: int, stride: Sequence[int]
    ) -> None:
        super().__init__(spec, level, cin, cout, n, stride)
        ndim = spec.spatial_dims
        self.convs[-1] = ConvNormAct(
            spec,
            level,
            cin if n == 1 else cout,
            cout,
            stride if n == 1 else (1,) * ndim,
            activate=False,
        )
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout or any(s != 1 for s in stride):
            self.shortcut = nn.Sequential(
                layers.conv(ndim)(cin, cout, 1, stride=tuple(stride), bias=spec.conv_bias),
                layers.norm(spec.norm, ndim, cout),
            )
        self.act = layers.act(spec.act[0], spec.act_kwargs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x) + self.shortcut(x))


def make_block(
    spec: UNetSpec, level: int, cin: int, cout: int, n: int, stride: Sequence[int]
) -> nn.Module:
    cls = ResidualBlock if spec.block == "residual" else PlainBlock
    return cls(spec, level, cin, cout, n, stride)


class UpTransposed(nn.Module):
    """Transposed conv whose output_padding and crop are solved from the skip's size.

    Padding is fixed at build time (:func:`segkit.shapes.up_padding`); the
    remainder of the downsampling is recovered per forward call, so any input
    size comes back exactly.
    """

    def __init__(self, spec: UNetSpec, level: int, cin: int, cout: int) -> None:
        super().__init__()
        self.downs: tuple[Downsample, ...] = spec.downsamples(level + 1)
        self.kernel = spec.up_kernel_size[level]
        self.stride = spec.strides[level + 1]
        self.conv = layers.conv_transpose(spec.spatial_dims)(
            cin, cout, self.kernel, stride=self.stride, bias=spec.conv_bias
        )
        self._fit_cache: dict[tuple[int, ...], tuple] = {}

    def _fit(self, skip: tuple[int, ...]) -> tuple:
        fit = self._fit_cache.get(skip)
        if fit is None:
            fits = [fit_transposed(n, d, u) for n, d, u in zip(skip, self.downs, self.kernel)]
            pad = tuple(f.padding for f in fits)
            op = tuple(f.output_padding for f in fits)
            crop = tuple(f.crop for f in fits)
            fit = self._fit_cache[skip] = (pad, op, crop)
        return fit

    def forward(self, x: torch.Tensor, skip_size: Sequence[int]) -> torch.Tensor:
        pad, op, crop = self._fit(tuple(skip_size))
        conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[x.dim() - 2]
        y = conv_t(x, self.conv.weight, self.conv.bias, self.stride, pad, op)
        if any(crop):
            # Fixed side (the end): positive crops, negative pads with zeros.
            y = F.pad(y, [p for c in reversed(crop) for p in (0, -c)])
        return y


class UpInterp(nn.Module):
    """Interpolation to the skip's exact size, then a 1×1 conv to the skip's width."""

    def __init__(self, spec: UNetSpec, level: int, cin: int, cout: int) -> None:
        super().__init__()
        ndim = spec.spatial_dims
        self.mode = (
            "nearest"
            if spec.interp_mode == "nearest"
            else {1: "linear", 2: "bilinear", 3: "trilinear"}[ndim]
        )
        self.conv = layers.conv(ndim)(cin, cout, 1, bias=spec.conv_bias)

    def forward(self, x: torch.Tensor, skip_size: Sequence[int]) -> torch.Tensor:
        kw = {} if self.mode == "nearest" else {"align_corners": False}
        return self.conv(F.interpolate(x, size=tuple(skip_size), mode=self.mode, **kw))
