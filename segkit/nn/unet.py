"""The U-Net, built from a :class:`~segkit.spec.UNetSpec`, and its plan.

The network plans itself: :func:`plan_unet` decides feasibility by shape algebra
(:mod:`segkit.plan`) and reads every row off this module, run once on the meta device
(:mod:`segkit.nn.trace`), so a plan and a forward pass cannot disagree.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segkit.errors import ShapeError
from segkit.nn import layers
from segkit.nn.contract import verify_blocks
from segkit.nn.stages import DecoderStage, EncoderStage
from segkit.nn.trace import Trace, trace
from segkit.plan import LayerRow, Plan, stage_sizes, unet_min_input_size
from segkit.spec import UNetSpec

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

    def forward(
        self, x: torch.Tensor, *, traceable: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits of ``x`` (N, C, *S).

        With ``traceable=True`` every size-dependent number (a transposed conv's
        output_padding and crop) is computed by tensor-shape arithmetic that
        ``torch.jit.trace`` and ``torch.export`` keep symbolic, rather than by Python
        integers that a tracer would bake in for one size; the logits are the same.
        The input size is then not checked (:meth:`check_input`) either.
        """
        if x.dim() != self.spec.spatial_dims + 2:
            raise ShapeError(
                f"expected a batch of shape (N, C, {', '.join('S' * self.spec.spatial_dims)}) "
                f"for a {self.spec.spatial_dims}D model, got {tuple(x.shape)}"
            )
        # not while tracing: the traced size would only warn, and the example fixes the width
        if not torch.jit.is_tracing() and x.shape[1] != self.spec.in_channels:
            raise ShapeError(
                f"input has {x.shape[1]} channels but model.in_channels={self.spec.in_channels}"
            )
        # meta tensors come from the planner, which has checked the size already
        checkable = not torch.jit.is_scripting() and not torch.compiler.is_compiling()
        if checkable and not traceable and not x.is_meta:
            self.check_input(x.shape[2:], x.shape[0])
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs = []
        for i in range(len(self.decoder) - 1, -1, -1):
            x = self.decoder[i](x, skips[i], traceable=traceable)
            if i < len(self.heads) and (i == 0 or self.training):
                outputs.append(self.heads[i](x))
        if not outputs:  # depth 1: no decoder
            outputs.append(self.heads[0](x))
        if self.spec.deep_supervision and self.training:
            return outputs[::-1]
        return outputs[-1]


@functools.lru_cache(maxsize=8)
def meta_unet(spec: UNetSpec) -> UNet:
    """The network of ``spec`` on the meta device (no memory), cached per spec."""
    with torch.device("meta"):
        return UNet(spec)


@functools.lru_cache(maxsize=64)
def trace_unet(spec: UNetSpec, size: tuple[int, ...]) -> Trace:
    """:func:`~segkit.nn.trace.trace` of the network of ``spec`` at ``size``, per sample.

    Batch norm refuses one value per channel in training, so a net that shrinks to
    one voxel is traced with a batch of two and the totals halved. Cached per
    (spec, size): a meta forward costs milliseconds per layer.
    """
    batch = 1
    if spec.norm[0] == "batch" and min(math.prod(s) for s in stage_sizes(spec, size)) == 1:
        batch = 2
    return trace(meta_unet(spec), (batch, spec.in_channels, *size))


def plan_unet(spec: UNetSpec, input_size: Sequence[int], *, title: str = "") -> Plan:
    """Solve every layer of ``spec`` at ``input_size``.

    Feasibility is decided by shape algebra first (:func:`segkit.plan.stage_sizes`: a
    clear :class:`ShapeError`); the rows are then read off the network itself, run once
    on the meta device (:mod:`segkit.nn.trace`): sizes, padding, parameters, FLOPs and
    autograd's saved tensors (fp32 training, one sample) cannot disagree with the module.

    Raises:
        ShapeError: the input is too small for some level, naming the stage,
            the axis, the sizes and the fix (smallest valid size, largest depth);
            or a user block does not keep the block contract, naming block and stage.
    """
    size: tuple[int, ...] = tuple(int(v) for v in input_size)
    stage_sizes(spec, size)
    verify_blocks(spec)
    traced = trace_unet(spec, size)
    if traced.output_size != size:  # cannot happen: the solver is exact; guard it loudly
        raise AssertionError(f"internal error: plan output {traced.output_size} != input {size}")
    rows = tuple(
        LayerRow(
            name=r.name,
            stage=_stage_of(r.name),
            op=r.op,
            kernel=r.kernel,
            stride=r.stride,
            padding=r.padding,
            in_size=r.in_size,
            out_size=r.out_size,
            in_channels=r.in_channels,
            out_channels=r.out_channels,
            params=r.params,
            macs=r.flops // 2,
            output_padding=r.output_padding,
            crop=r.crop,
            saved=r.saved_bytes,
        )
        for r in traced.rows
    )
    return Plan(
        rows=rows,
        input_size=size,
        output_size=traced.output_size,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        params=traced.params,
        macs=traced.flops // 2,
        receptive_field=traced.receptive_field,
        activation_bytes=traced.saved_bytes,
        min_input_size=unet_min_input_size(spec),
        title=title,
    )


def _stage_of(name: str) -> str:
    parts = name.split(".")
    if len(parts) >= 2 and parts[1].isdigit():
        if parts[0] == "encoder":
            return "stem" if len(parts) > 2 and parts[2] == "stem" else f"enc{parts[1]}"
        if parts[0] == "decoder":
            return f"dec{parts[1]}"
        if parts[0] == "heads":
            return "head" if parts[1] == "0" else f"ds{parts[1]}"
    return parts[0]


__all__ = ["UNet", "meta_unet", "plan_unet", "trace_unet"]
