"""The U-Net, built from a :class:`~segkit.spec.UNetSpec` and its solved shapes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segkit.errors import ShapeError
from segkit.nn import layers
from segkit.nn.blocks import UpInterp, UpTransposed, make_block
from segkit.plan import Plan, plan_unet, unet_min_input_size
from segkit.spec import UNetSpec


class EncoderStage(nn.Module):
    def __init__(self, spec: UNetSpec, level: int, cin: int) -> None:
        super().__init__()
        stride = spec.strides[level]
        self.down: nn.Module = nn.Identity()
        if spec.pooling and level > 0:
            self.down = layers.pool(spec.downsample, spec.spatial_dims, stride)
            stride = (1,) * spec.spatial_dims
        self.block = make_block(
            spec, level, cin, spec.channels[level], spec.convs_per_stage[level], stride
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.down(x))


class DecoderStage(nn.Module):
    def __init__(self, spec: UNetSpec, level: int) -> None:
        super().__init__()
        cin, cout = spec.channels[level + 1], spec.channels[level]
        up = UpInterp if spec.upsample == "interpolate" else UpTransposed
        self.up = up(spec, level, cin, cout)
        self.block = make_block(
            spec,
            level,
            2 * cout,
            cout,
            spec.convs_per_stage_decoder[level],
            (1,) * spec.spatial_dims,
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat((skip, self.up(x, skip.shape[2:])), dim=1))


class UNet(nn.Module):
    """A U-Net whose decoder matches every encoder skip exactly, for any input size.

    Build it from keyword arguments (the keys of ``conf/model/*.yaml``, see
    :meth:`segkit.spec.UNetSpec.from_config`) or from a ready spec::

        net = UNet(spatial_dims=3, in_channels=1, out_channels=3, depth=5)
        print(net.plan((197, 233, 189)))

    ``forward`` returns logits of the input's spatial size; with deep supervision
    and in training mode it returns a list, largest resolution first.
    """

    def __init__(self, spec: UNetSpec | None = None, **config: Any) -> None:
        super().__init__()
        self.spec = spec if spec is not None else UNetSpec.from_config(config)
        s = self.spec
        self.min_input_size = unet_min_input_size(s)
        cin = s.in_channels
        enc = []
        for i in range(s.depth):
            enc.append(EncoderStage(s, i, cin))
            cin = s.channels[i]
        self.encoder = nn.ModuleList(enc)
        self.decoder = nn.ModuleList(DecoderStage(s, i) for i in range(s.depth - 1))
        n_heads = max(1, s.depth - 1) if s.deep_supervision else 1
        self.heads = nn.ModuleList(
            layers.conv(s.spatial_dims)(s.channels[i], s.out_channels, 1) for i in range(n_heads)
        )
        self._smallest: dict[tuple[int, ...], int] = {}

    def plan(self, input_size: Sequence[int]) -> Plan:
        """The static plan at ``input_size`` (same arithmetic as :meth:`forward`)."""
        return plan_unet(self.spec, input_size)

    def check_input(self, size: Sequence[int], batch: int = 2) -> None:
        """Raise :class:`ShapeError` (never a PyTorch error) if ``size`` cannot be processed."""
        key = tuple(int(v) for v in size)
        smallest = self._smallest.get(key)
        if smallest is None:
            plan = plan_unet(self.spec, key)  # raises ShapeError with the fix
            smallest = min(math.prod(r.out_size) for r in plan.rows if ".convs." in r.name)
            self._smallest[key] = smallest
        if self.spec.norm[0] == "batch" and self.training and batch * smallest == 1:
            raise ShapeError(
                f"input {list(key)} shrinks to one voxel at the deepest stage and batch norm "
                "needs more than one value per channel to train: use a batch of 2 or more, a "
                "larger input, or model.norm=instance|group"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.dim() != self.spec.spatial_dims + 2:
            raise ShapeError(
                f"expected a batch of shape (N, C, {', '.join('S' * self.spec.spatial_dims)}) "
                f"for a {self.spec.spatial_dims}D model, got {tuple(x.shape)}"
            )
        if x.shape[1] != self.spec.in_channels:
            raise ShapeError(
                f"input has {x.shape[1]} channels but model.in_channels={self.spec.in_channels}"
            )
        if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
            self.check_input(x.shape[2:], x.shape[0])
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs = []
        for i in range(len(self.decoder) - 1, -1, -1):
            x = self.decoder[i](x, skips[i])
            if i < len(self.heads) and (i == 0 or self.training):
                outputs.append(self.heads[i](x))
        if not outputs:  # depth 1: no decoder
            outputs.append(self.heads[0](x))
        if self.spec.deep_supervision and self.training:
            return outputs[::-1]
        return outputs[-1]
