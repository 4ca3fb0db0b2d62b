"""The U-Net's stages: an encoder stage (stem, pooling, blocks) and a decoder stage
(upsampling to the skip's exact size, merge, blocks), each built from the spec."""

from __future__ import annotations

import torch
from torch import nn

from segkit.nn import layers
from segkit.nn.blocks import BlockContext, ConvNormAct, Merge, build_block
from segkit.nn.up import MedNeXtUp, UpInterp, UpTransposed
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

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, *, traceable: bool = False
    ) -> torch.Tensor:
        return self.fuse(skip, self.up(x, skip.shape[2:], traceable=traceable))


__all__ = ["DecoderStage", "EncoderStage"]
