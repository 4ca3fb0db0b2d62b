"""The U-Net's blocks: one class per block, and that class is the block's only home.

Every block, built-in or a user's, follows one constructor contract::

    Block(in_channels: int, out_channels: int, stride: tuple[int, ...],
          context: BlockContext, **kwargs)

and its ``forward(x)`` maps ``(N, in_channels, *S)`` to
``(N, out_channels, *ceil(S / stride))`` — what a "same"-padded strided conv
gives, so the decoder can undo it exactly for every size. ``kwargs`` are the
extra keys of the YAML entry (``encoder_block: {_target_: my.SEBlock, reduction: 4}``).
:class:`BlockContext` carries the stage's settings (kernel, dilation, norm,
activation, expansion, ...) and makes "same"-padded convs, norms and activations
as the rest of the network does.

Nothing here describes sizes, parameters, FLOPs or memory: the plan
(:mod:`segkit.nn.trace`) runs the module itself on the meta device and reads
them off, so a block is written once and its plan cannot drift from it. A
module that is one row of the plan only says what it is, with
``plan_op(in_size, out_size)``: a label, kernel, stride and padding.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segkit import registry
from segkit.errors import ConfigError
from segkit.nn import layers
from segkit.shapes import same_padding
from segkit.spec import Choice, UNetSpec, is_custom

Size = tuple[int, ...]


def _f_pad(pads: Sequence[tuple[int, int]]) -> list[int]:
    """``(lo, hi)`` per axis → F.pad's last-axis-first flat list."""
    return [p for lo_hi in reversed(pads) for p in lo_hi]


def _down_rf(kernel: Size, stride: Size, dilation: Size) -> list[tuple[str, int, int]]:
    return [("down", d * (k - 1) + 1, s) for k, s, d in zip(kernel, stride, dilation)]


@dataclass(frozen=True)
class BlockContext:
    """What a block needs to know about its place in the network.

    Attributes:
        spatial_dims: 2 or 3 (or 1).
        stage: where the block sits, for messages (``"encoder stage 2, block 0"``).
        kernel_size: the stage's kernel, per axis.
        dilation: the stage's dilation, per axis.
        expansion: the stage's expansion ratio (MedNeXt: hidden = ratio × input width;
            bottleneck: middle = output width / ratio).
        convs: convs per block (plain and residual blocks).
        norm: ``(name, kwargs)`` of the norm layer.
        act: ``(name, kwargs)`` of the activation, kwargs complete.
        dropout: channel-dropout probability after each activated conv's norm.
        conv_bias: bias in convs.
        grn: MedNeXt's global response normalisation after the expansion.
        shortcut: a strided residual shortcut's form, ``conv`` (strided 1×1 conv) or
            ``avgpool`` (ResNet-D: average pool, then 1×1 conv).
    """

    spatial_dims: int
    stage: str
    kernel_size: Size
    dilation: Size
    expansion: int = 2
    convs: int = 2
    norm: Choice = ("instance", ())
    act: Choice = ("leakyrelu", ())
    dropout: float = 0.0
    conv_bias: bool = True
    grn: bool = False
    shortcut: str = "conv"

    @classmethod
    def of(cls, spec: UNetSpec, level: int, *, decoder: bool, index: int) -> BlockContext:
        """The context of block ``index`` of encoder or decoder stage ``level``."""
        if decoder:
            expansion, convs = spec.expansion_decoder[level], spec.convs_per_stage_decoder[level]
        else:
            # the first block of a stage reads the width (and ratio) of the stage before
            expansion = spec.expansion[level - 1 if index == 0 and level > 0 else level]
            convs = spec.convs_per_stage[level]
        return cls(
            spatial_dims=spec.spatial_dims,
            stage=f"{'decoder' if decoder else 'encoder'} stage {level}, block {index}",
            kernel_size=spec.kernel_size[level],
            dilation=spec.dilation[level],
            expansion=expansion,
            convs=convs,
            norm=spec.norm,
            act=(spec.act[0], tuple(sorted(spec.act_kwargs().items()))),
            dropout=spec.dropout,
            conv_bias=spec.conv_bias,
            grn=spec.grn,
            shortcut=spec.shortcut,
        )

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel: int | Sequence[int] | None = None,
        stride: int | Sequence[int] = 1,
        groups: int = 1,
        norm: bool = True,
        act: bool = True,
        dropout: bool = True,
        bias: bool | None = None,
    ) -> ConvNormAct:
        """A "same"-padded conv → norm → dropout → act (each part optional)."""
        return ConvNormAct(
            self,
            in_channels,
            out_channels,
            kernel=kernel,
            stride=stride,
            groups=groups,
            norm=norm,
            act=act,
            dropout=dropout,
            bias=bias,
        )

    def norm_layer(self, channels: int) -> nn.Module:
        """The configured norm over ``channels`` (``nn.Identity`` for ``none``)."""
        return layers.norm(self.norm, self.spatial_dims, channels)

    def act_layer(self) -> nn.Module:
        """The configured activation."""
        return layers.act(self.act[0], dict(self.act[1]))

    def _axes(self, value: int | Sequence[int]) -> Size:
        if isinstance(value, int):
            return (value,) * self.spatial_dims
        return tuple(int(v) for v in value)


class ConvNormAct(nn.Module):
    """conv → norm → (dropout) → act with "same" padding (asymmetric for even kernels).

    ``ceil(S / stride)`` for every size ``S``. One row of the plan.
    """

    def __init__(
        self,
        context: BlockContext,
        in_channels: int,
        out_channels: int,
        *,
        kernel: int | Sequence[int] | None = None,
        stride: int | Sequence[int] = 1,
        groups: int = 1,
        norm: bool = True,
        act: bool = True,
        dropout: bool = True,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        ndim = context.spatial_dims
        self.kernel = context._axes(context.kernel_size if kernel is None else kernel)
        self.dilation = context.dilation if kernel is None else (1,) * ndim
        self.stride = context._axes(stride)
        self.pads = tuple(same_padding(k, d) for k, d in zip(self.kernel, self.dilation))
        symmetric = all(lo == hi for lo, hi in self.pads)
        # Asymmetric (even-kernel) padding goes through F.pad; symmetric stays in the conv.
        self.pad = None if symmetric else _f_pad(self.pads)
        self.conv = layers.conv(ndim)(
            in_channels,
            out_channels,
            self.kernel,
            stride=self.stride,
            padding=tuple(lo for lo, _ in self.pads) if symmetric else 0,
            dilation=self.dilation,
            groups=groups,
            bias=context.conv_bias if bias is None else bias,
        )
        self.norm = context.norm_layer(out_channels) if norm else nn.Identity()
        self.drop = layers.dropout(context.dropout, ndim) if act and dropout else nn.Identity()
        self.act = context.act_layer() if act else nn.Identity()
        self.depthwise = groups > 1 and groups == in_channels

    def plan_op(self, in_size: Size, out_size: Size) -> dict[str, Any]:
        op = "conv (depthwise)" if self.depthwise else "conv"
        if all(k == 1 for k in self.kernel) and not self.depthwise:
            op = "conv 1×1"
        return {
            "op": op,
            "kernel": self.kernel,
            "stride": self.stride,
            "padding": self.pads,
            "rf": _down_rf(self.kernel, self.stride, self.dilation),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.act(self.drop(self.norm(self.conv(x))))


class Shortcut(nn.Module):
    """The residual path of a block whose shape changes: 1×1 conv (+ norm).

    ``conv`` form: a strided 1×1 conv, ``ceil(S/s)`` like the main path. ``avgpool``
    form (ResNet-D, as nnU-Net's ResEnc): average-pool the stride away, then a 1×1
    conv. A floor pool would give ``floor(S/s)`` and crash the residual add on odd
    sizes (what ResidualEncoderUNet does); this pool pads the end of each axis to a
    multiple of the stride (ceil mode, averaging only real voxels), so it lands on
    ``ceil(S/s)`` for every size; the plan shows the padding per size.
    """

    parallel_path = True  # not on the main path: left out of the receptive field

    def __init__(
        self,
        context: BlockContext,
        in_channels: int,
        out_channels: int,
        stride: Size,
        *,
        norm: bool = True,
    ) -> None:
        super().__init__()
        ndim = context.spatial_dims
        self.stride = tuple(stride)
        strided = any(s != 1 for s in stride)
        self.pooled = strided and context.shortcut == "avgpool"
        self.pool = (
            layers.pool("avgpool", ndim, self.stride, ceil_mode=True) if self.pooled else None
        )
        with_norm = norm and context.norm[0] != "none"
        self.conv: nn.Module | None = None
        if in_channels != out_channels or (strided and not self.pooled):
            self.conv = layers.conv(ndim)(
                in_channels,
                out_channels,
                1,
                stride=1 if self.pooled else self.stride,
                # a bias right before a norm is redundant (nnU-Net leaves it out too)
                bias=context.conv_bias and not with_norm,
            )
        self.norm = context.norm_layer(out_channels) if with_norm and self.conv else nn.Identity()

    def plan_op(self, in_size: Size, out_size: Size) -> dict[str, Any]:
        ndim = len(in_size)
        if self.pooled:
            pads = tuple((0, o * s - n) for n, o, s in zip(in_size, out_size, self.stride))
            op = "avgpool (ceil) + conv 1×1" if self.conv is not None else "avgpool (ceil)"
            return {
                "op": op + " (shortcut)",
                "kernel": self.stride,
                "stride": self.stride,
                "padding": pads,
            }
        return {
            "op": "conv 1×1 (shortcut)",
            "kernel": (1,) * ndim,
            "stride": self.stride,
            "padding": ((0, 0),) * ndim,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.conv is not None:
            x = self.norm(self.conv(x))
        return x


def _shortcut(
    context: BlockContext, cin: int, cout: int, stride: Size, *, norm: bool = True
) -> nn.Module | None:
    if cin == cout and all(s == 1 for s in stride):
        return None
    return Shortcut(context, cin, cout, stride, norm=norm)


class PlainBlock(nn.Module):
    """``context.convs`` conv → norm → act layers; the first carries the stride."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: Size, context: BlockContext
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            context.conv(
                in_channels if j == 0 else out_channels,
                out_channels,
                stride=stride if j == 0 else 1,
            )
            for j in range(context.convs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.convs:
            x = layer(x)
        return x


class _Residual(nn.Module):
    """``self.convs`` in sequence (the last without activation), plus a shortcut (identity,
    or :class:`Shortcut` when width or size change), then act: what residual blocks share."""

    def __init__(
        self,
        convs: list[nn.Module],
        in_channels: int,
        out_channels: int,
        stride: Size,
        context: BlockContext,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.shortcut = _shortcut(context, in_channels, out_channels, tuple(stride))
        self.act = context.act_layer()
        self.act.plan_label = f"add residual + {context.act[0]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.convs:
            y = layer(y)
        # in place: the last layer is a norm (or conv), whose backward does not need its output
        y += x if self.shortcut is None else self.shortcut(x)
        return self.act(y)


class ResidualBlock(_Residual):
    """ResNet basic block: ``context.convs`` convs (the last without activation), plus a
    shortcut (identity, or :class:`Shortcut` when width or size change), then act."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: Size, context: BlockContext
    ) -> None:
        n = context.convs
        convs = [
            context.conv(
                in_channels if j == 0 else out_channels,
                out_channels,
                stride=stride if j == 0 else 1,
                act=j < n - 1,
            )
            for j in range(n)
        ]
        super().__init__(convs, in_channels, out_channels, stride, context)


class BottleneckBlock(_Residual):
    """ResNet bottleneck (ResNet-D: stride in the middle conv): 1×1 reduce to
    ``out_channels / expansion`` → k×k (strided) → 1×1 expand, plus shortcut, then act."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: Size, context: BlockContext
    ) -> None:
        mid = max(1, out_channels // context.expansion)
        convs = [
            context.conv(in_channels, mid, kernel=1, dropout=False),
            context.conv(mid, mid, stride=stride),
            context.conv(mid, out_channels, kernel=1, act=False),
        ]
        super().__init__(convs, in_channels, out_channels, stride, context)


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt V2), as MedNeXt uses it after the expansion."""

    # its L2 norm runs over the whole input: a whole volume answers unlike the training
    # patches (segkit.inference.engine.extent_dependence)
    depends_on_extent = True

    def __init__(self, channels: int, spatial_dims: int) -> None:
        super().__init__()
        shape = (1, channels) + (1,) * spatial_dims
        self.gamma = nn.Parameter(torch.zeros(shape))
        self.beta = nn.Parameter(torch.zeros(shape))

    def plan_op(self, in_size: Size, out_size: Size) -> dict[str, Any]:
        return {"op": "GRN"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, dim=tuple(range(2, x.dim())), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class MedNeXtBlock(nn.Module):
    """MedNeXt (ConvNeXt) block: depthwise k×k(×k) conv (strided in a down block) → norm →
    1×1 expansion to ``expansion × in_channels`` → act → (GRN) → 1×1 compression,
    plus the residual: identity, or a 1×1 conv (no norm) when width or size change,
    as MedNeXt's down block does."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: Size, context: BlockContext
    ) -> None:
        super().__init__()
        hidden = context.expansion * in_channels
        self.dw = context.conv(
            in_channels, in_channels, stride=stride, groups=in_channels, act=False
        )
        self.expand = context.conv(in_channels, hidden, kernel=1, norm=False)
        self.grn = GRN(hidden, context.spatial_dims) if context.grn else None
        self.compress = context.conv(hidden, out_channels, kernel=1, norm=False, act=False)
        self.shortcut = _shortcut(context, in_channels, out_channels, tuple(stride), norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.dw(x))
        if self.grn is not None:
            y = self.grn(y)
        y = self.compress(y)  # a conv's output: its backward does not need it, so add in place
        y += x if self.shortcut is None else self.shortcut(x)
        return y


def block_class(choice: Choice, key: str) -> type[nn.Module]:
    """The class of a block choice; a user's must be an ``nn.Module`` subclass.

    Raises:
        ConfigError: naming ``model.<key>``, when the target is not such a class.
    """
    name = choice[0]
    if not is_custom(choice):
        return layers.resolve(registry.BLOCKS[name])
    cls = layers.resolve(name)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ConfigError(
            f"model.{key}._target_: {name!r} is a {type(cls).__name__}, not an nn.Module "
            "subclass. Fix: name a block class with the constructor "
            "(in_channels, out_channels, stride, context, **kwargs)"
        )
    return cls


def build_block(
    choice: Choice,
    key: str,
    in_channels: int,
    out_channels: int,
    stride: Size,
    context: BlockContext,
) -> nn.Module:
    """One block by the constructor contract; a user block is marked for shape checks.

    Raises:
        ConfigError: the block's constructor rejects the contract's arguments,
            naming the key, the stage and the class.
    """
    cls = block_class(choice, key)
    try:
        block = cls(
            in_channels=in_channels,
            out_channels=out_channels,
            stride=tuple(stride),
            context=context,
            **dict(choice[1]),
        )
    except TypeError as exc:
        if not is_custom(choice):
            raise
        raise ConfigError(
            f"model.{key} ({context.stage}): {choice[0]}(in_channels={in_channels}, "
            f"out_channels={out_channels}, stride={tuple(stride)}, context=..., "
            f"**{dict(choice[1])}) failed: {exc}. Fix: a block's __init__ takes "
            "(in_channels, out_channels, stride, context, **kwargs); see segkit.nn.blocks"
        ) from None
    if is_custom(choice):
        where = f"{context.stage} ({choice[0]})"
        block.segkit_expect = (in_channels, out_channels, tuple(stride), where)
    return block


class Merge(nn.Module):
    """Joins the skip and the upsampled features: ``concat`` (channels add up) or ``add``."""

    plan_input = 1  # the row's input is the upsampled tensor (the second argument)

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def plan_op(self, in_size: Size, out_size: Size) -> dict[str, Any]:
        return {"op": "concat skip" if self.mode == "concat" else "add skip"}

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if self.mode == "add":
            return skip + up
        return torch.cat((skip, up), dim=1)
