"""The U-Net, built from a :class:`~segkit.spec.UNetSpec` and its solved shapes."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segkit.errors import ShapeError
from segkit.nn import layers
from segkit.nn.blocks import (
    BlockContext,
    ConvNormAct,
    MedNeXtUp,
    Merge,
    UpInterp,
    UpTransposed,
    build_block,
)
from segkit.plan import Plan, plan_unet, stage_sizes, unet_min_input_size
from segkit.spec import UNetSpec


def _stem(spec: UNetSpec) -> nn.Module | None:
    if spec.stem == "none":
        return None
    ctx = BlockContext.of(spec, 0, decoder=False, index=0)
    if spec.stem == "conv1x1":  # MedNeXt: a bare 1×1 projection
        return ConvNormAct(
            ctx, spec.in_channels, spec.stem_channels, kernel=1, norm=False, act=False, bias=True
        )
    return ConvNormAct(ctx, spec.in_channels, spec.stem_channels, dropout=False)


class EncoderStage(nn.Module):
    """(stem, stage 0 only) → (pooling) → ``blocks_per_stage[level]`` blocks."""

    def __init__(self, spec: UNetSpec, level: int, cin: int) -> None:
        super().__init__()
        ndim = spec.spatial_dims
        stride = spec.strides[level]
        self.stem = _stem(spec) if level == 0 else None
        if self.stem is not None:
            cin = spec.stem_channels
        self.down: nn.Module | None = None
        if spec.pooling and level > 0:
            self.down = layers.pool(spec.downsample, ndim, stride)
            stride = (1,) * ndim
        cout = spec.channels[level]
        blocks = []
        for j in range(spec.blocks_per_stage[level]):
            ctx = BlockContext.of(spec, level, decoder=False, index=j)
            blocks.append(
                build_block(
                    spec.encoder_block,
                    "encoder_block",
                    cin if j == 0 else cout,
                    cout,
                    stride if j == 0 else (1,) * ndim,
                    ctx,
                )
            )
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        if self.down is not None:
            x = self.down(x)
        return self.blocks(x)


class DecoderStage(nn.Module):
    """Upsampling to the skip's exact size → merge (concat or add) → blocks."""

    def __init__(self, spec: UNetSpec, level: int) -> None:
        super().__init__()
        ndim = spec.spatial_dims
        cin, cout = spec.channels[level + 1], spec.channels[level]
        downs = spec.downsamples(level + 1)
        if spec.upsample == "interpolate":
            self.up: nn.Module = UpInterp(
                ndim,
                cin,
                cout,
                stride=spec.strides[level + 1],
                mode=spec.interp_mode,
                bias=spec.conv_bias,
            )
        elif spec.upsample == "mednext":
            ctx = BlockContext.of(spec, level, decoder=True, index=0)
            self.up = MedNeXtUp(
                cin, cout, downs=downs, kernel=spec.up_kernel_size[level], context=ctx
            )
        else:
            self.up = UpTransposed(
                ndim,
                cin,
                cout,
                downs=downs,
                kernel=spec.up_kernel_size[level],
                bias=spec.conv_bias,
            )
        self.merge = Merge(spec.skip_merge)
        merged = 2 * cout if spec.skip_merge == "concat" else cout
        self.blocks = nn.Sequential(
            *(
                build_block(
                    spec.decoder_block,
                    "decoder_block",
                    merged if j == 0 else cout,
                    cout,
                    (1,) * ndim,
                    BlockContext.of(spec, level, decoder=True, index=j),
                )
                for j in range(spec.blocks_per_stage_decoder[level])
            )
        )

    def fuse(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Merge the skip with the upsampled features and run the blocks."""
        return self.blocks(self.merge(skip, up))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(skip, self.up(x, skip.shape[2:]))


_LEGACY = (
    (re.compile(r"^((?:encoder|decoder)\.\d+)\.block\."), r"\1.blocks.0."),
    (re.compile(r"\.shortcut\.0\."), ".shortcut.conv."),
    (re.compile(r"\.shortcut\.1\."), ".shortcut.norm."),
)


def _rename_legacy_keys(state: dict, prefix: str, *args: Any) -> None:
    """Checkpoints written before blocks per stage (``encoder.0.block.convs.0...``) load."""
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        for pattern, repl in _LEGACY:
            rest = pattern.sub(repl, rest)
        if prefix + rest != key:
            state[prefix + rest] = state.pop(key)


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
        for head in self.heads:
            head.plan_label = "conv 1×1 (logits)"
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)
        self._smallest: dict[tuple[int, ...], int] = {}
        if any(isinstance(m, nn.Module) and hasattr(m, "segkit_expect") for m in self.modules()):
            from segkit.nn.trace import verify_blocks

            verify_blocks(s)

    def plan(self, input_size: Sequence[int]) -> Plan:
        """The static plan at ``input_size``, read off this architecture on the meta device."""
        return plan_unet(self.spec, input_size)

    def check_input(self, size: Sequence[int], batch: int = 2) -> None:
        """Raise :class:`ShapeError` (never a PyTorch error) if ``size`` cannot be processed."""
        key = tuple(int(v) for v in size)
        smallest = self._smallest.get(key)
        if smallest is None:
            sizes = stage_sizes(self.spec, key)  # raises ShapeError with the fix
            smallest = min(math.prod(s) for s in sizes)
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
        # meta tensors come from the planner, which has checked the size already
        if not torch.jit.is_scripting() and not torch.compiler.is_compiling() and not x.is_meta:
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
