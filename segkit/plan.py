"""Static plans: the plan table and the feasibility arithmetic, before anything runs.

:class:`Plan` (rows of :class:`LayerRow`) is what segkit knows about a network at one
input size; it renders as a table or a dict. This module is pure shape algebra and
imports no torch: :func:`stage_sizes` is the one function for the size of every
resolution level (and says how to fix an input that is too small), and
:func:`plan_layers` describes an explicit stack of layers (the seed article's
examples). A U-Net's plan is read off the network itself: :func:`segkit.nn.plan_unet`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from segkit.errors import ShapeError
from segkit.shapes import (
    conv_out,
    conv_transpose_out,
    min_input_size,
    receptive_field,
    resolve_padding,
    same_padding,
    to_tuple,
)
from segkit.spec import UNetSpec, group_count
from segkit.table import format_table

Size = tuple[int, ...]

# Bytes per activation element for the memory estimate (fp32 training).
_BYTES = 4


@dataclass(frozen=True)
class LayerRow:
    """One layer of a plan; sizes are spatial, per axis."""

    name: str
    stage: str
    op: str
    kernel: Size
    stride: Size
    padding: tuple[tuple[int, int], ...]
    in_size: Size
    out_size: Size
    in_channels: int
    out_channels: int
    params: int = 0
    macs: int = 0
    output_padding: Size | None = None
    crop: Size | None = None
    saved: int = 0  # bytes autograd keeps for backward (per sample, fp32 training)


@dataclass(frozen=True)
class Plan:
    """Everything segkit knows about a network at one input size."""

    rows: tuple[LayerRow, ...]
    input_size: Size
    output_size: Size
    in_channels: int
    out_channels: int
    params: int
    macs: int
    receptive_field: Size
    activation_bytes: int
    min_input_size: Size | None = None
    title: str = ""

    def row(self, name: str) -> LayerRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON-serialisable)."""
        d = asdict(self)
        d["rows"] = [asdict(r) for r in self.rows]
        return d

    def summary(self) -> dict[str, Any]:
        """The totals alone."""
        return {
            "input_size": list(self.input_size),
            "output_size": list(self.output_size),
            "params": self.params,
            "macs": self.macs,
            "gflops": round(2 * self.macs / 1e9, 3),
            "receptive_field": list(self.receptive_field),
            "activation_mib": round(self.activation_bytes / 2**20, 1),
            "min_input_size": list(self.min_input_size) if self.min_input_size else None,
        }

    def table(self) -> str:
        """Human-readable table, one row per layer, then the totals."""
        header = (
            "layer",
            "op",
            "kernel",
            "stride",
            "padding",
            "out_pad/crop",
            "in → out size",
            "channels",
            "params",
        )
        lines = [header]
        for r in self.rows:
            fix = ""
            if r.output_padding is not None:
                fix = "op " + _axes(r.output_padding)
            if r.crop is not None and any(r.crop):
                fix += (" " if fix else "") + "crop " + _axes(r.crop)
            lines.append(
                (
                    r.name,
                    r.op,
                    _axes(r.kernel) if r.kernel else "",
                    _axes(r.stride) if r.stride else "",
                    _pads(r.padding) if r.padding else "",
                    fix,
                    f"{_axes(r.in_size)} → {_axes(r.out_size)}",
                    f"{r.in_channels} → {r.out_channels}",
                    f"{r.params:,}" if r.params else "",
                )
            )
        out = [self.title] if self.title else []
        out.append(format_table(header, lines[1:]))
        s = self.summary()
        out += [
            "",
            f"input {_axes(self.input_size)} × {self.in_channels} ch  →  output "
            f"{_axes(self.output_size)} × {self.out_channels} ch",
            f"params            {self.params:,}",
            f"forward           {self.macs / 1e9:,.3f} GMACs "
            f"({s['gflops']:,.3f} GFLOPs) per sample",
            f"receptive field   {_axes(self.receptive_field)}",
            f"activations       {s['activation_mib']:,.1f} MiB per sample (training, fp32; "
            "about half under bf16)",
        ]
        if self.min_input_size:
            out.append(f"min input size    {_axes(self.min_input_size)}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _axes(values: Sequence[int]) -> str:
    return "×".join(str(v) for v in values)


def _pads(pads: Sequence[tuple[int, int]]) -> str:
    return "×".join(str(lo) if lo == hi else f"({lo},{hi})" for lo, hi in pads)


def _prod(values: Sequence[int]) -> int:
    return math.prod(values)


# --------------------------------------------------------------------------- U-Net


def unet_min_input_size(spec: UNetSpec) -> Size:
    """Smallest input size per axis that ``spec`` can process."""
    return tuple(
        min_input_size([spec.downsamples(i)[a] for i in range(1, spec.depth)])
        for a in range(spec.spatial_dims)
    )


def _largest_depth(spec: UNetSpec, size: Size) -> int:
    for depth in range(spec.depth, 0, -1):
        downs = [spec.downsamples(i) for i in range(1, depth)]
        if all(min_input_size([d[a] for d in downs]) <= size[a] for a in range(len(size))):
            return depth
    return 1


def _check_input(spec: UNetSpec, size: Size) -> None:
    ndim = spec.spatial_dims
    if len(size) != ndim:
        raise ShapeError(
            f"input size {list(size)} has {len(size)} axes but the model is {ndim}D "
            f"(model.spatial_dims={ndim}); give {ndim} sizes, e.g. data.patch_size={[64] * ndim}"
        )
    if any(not isinstance(v, int) or v < 1 for v in size):
        raise ShapeError(f"input size {list(size)}: every axis must be a positive integer")


def level_sizes(spec: UNetSpec, input_size: Sequence[int]) -> list[Size]:
    """The size of every resolution level (every encoder stage's output, the skips).

    Pure shape algebra, unchecked (:func:`stage_sizes` checks): every stage's
    downsampling is one strided "same" conv (``ceil``) or one pooling (``floor``),
    whatever the blocks are (:meth:`segkit.spec.UNetSpec.downsamples`).
    """
    sizes: list[Size] = [tuple(int(v) for v in input_size)]
    for i in range(1, spec.depth):
        sizes.append(tuple(d.out(n) for d, n in zip(spec.downsamples(i), sizes[-1])))
    return sizes


def stage_sizes(spec: UNetSpec, input_size: Sequence[int]) -> list[Size]:
    """:func:`level_sizes`, checked: the size of every encoder stage's output at ``input_size``.

    Raises:
        ShapeError: the input is too small for some level, naming the stage,
            the axis, the sizes and the fix (smallest valid size, largest depth).
    """
    size: Size = tuple(int(v) for v in input_size)
    _check_input(spec, size)
    minimum = unet_min_input_size(spec)
    skips = level_sizes(spec, size)
    for i in range(1, spec.depth):
        cur, stride = skips[i - 1], spec.strides[i]
        for a in range(spec.spatial_dims):
            if cur[a] < stride[a]:
                fit = _largest_depth(spec, size)
                raise ShapeError(
                    f"stage {i}, axis {a}: {cur[a]} voxel(s) cannot be downsampled by stride "
                    f"{stride[a]} (input {list(size)} shrinks to {list(cur)} "
                    f"at stage {i - 1}). "
                    f"Fix: an input of at least {list(minimum)} "
                    f"(axis {a} ≥ {minimum[a]}), or model.depth={fit} for this input, or "
                    f"stride 1 on axis {a} from stage {i}."
                )
    _check_norm(spec, skips, size, minimum)
    return skips


def _check_norm(spec: UNetSpec, skips: list[Size], size: Size, minimum: Size) -> None:
    """Instance and group norm need more than one value per group to train."""
    name, kwargs = spec.norm
    if name not in ("instance", "group"):
        return
    for i, s in enumerate(skips):
        per_group = 1
        if name == "group":
            c = spec.channels[i]
            per_group = c // group_count(c, dict(kwargs).get("num_groups", 8))
        if _prod(s) * per_group == 1:
            raise ShapeError(
                f"stage {i}: input {list(size)} shrinks to a single voxel {list(s)}, and {name} "
                f"norm needs more than one value per channel group to train. Fix: a larger input "
                f"on any axis (e.g. axis 0 ≥ {_grow_to_two(spec, 0, minimum[0])}), "
                f"model.depth={max(i, 1)}, or model.norm=batch|none."
            )


def _grow_to_two(spec: UNetSpec, axis: int, start: int) -> int:
    n = start
    while level_sizes(spec, (n,) * spec.spatial_dims)[-1][axis] < 2:
        n += 1
    return n


# ------------------------------------------------------------- explicit layer stacks

STACK_OPS = ("conv", "maxpool", "avgpool", "transposed")


def plan_layers(
    input_size: Sequence[int],
    in_channels: int,
    layers: Sequence[Mapping[str, Any]],
    *,
    title: str = "",
) -> Plan:
    """Plan an explicit stack of layers, e.g. the seed article's examples.

    Each layer is a mapping with ``type`` (``conv`` | ``maxpool`` | ``avgpool`` |
    ``transposed``), ``kernel_size``, and optionally ``stride`` (default 1; pools
    default to the kernel), ``padding`` (``same`` | ``valid`` | int | [lo, hi];
    default ``valid``), ``dilation``, ``output_padding`` and ``out_channels``
    (conv and transposed).

    Raises:
        ShapeError: a layer would produce fewer than one voxel, naming the layer.
    """
    size: Size = tuple(int(v) for v in input_size)
    ndim = len(size)
    rows: list[LayerRow] = []
    chain: list[list[tuple[str, int, int]]] = [[] for _ in range(ndim)]
    c = in_channels
    for n, layer in enumerate(layers):
        kind = layer.get("type", "conv")
        if kind not in STACK_OPS:
            raise ShapeError(f"layers[{n}].type: got {kind!r}; allowed: {', '.join(STACK_OPS)}")
        kernel = to_tuple(layer["kernel_size"], ndim, name=f"layers[{n}].kernel_size")
        pool = kind in ("maxpool", "avgpool")
        stride = to_tuple(
            layer.get("stride", kernel if pool else 1), ndim, name=f"layers[{n}].stride"
        )
        dil = to_tuple(layer.get("dilation", 1), ndim, name=f"layers[{n}].dilation")
        if kind == "avgpool" and any(d != 1 for d in dil):
            raise ShapeError(f"layers[{n}] (avgpool): average pooling has no dilation; remove it")
        cout = c if pool else int(layer.get("out_channels", c))
        if kind == "transposed":
            pad = to_tuple(layer.get("padding", 0), ndim, name=f"layers[{n}].padding")
            opad = to_tuple(
                layer.get("output_padding", 0), ndim, name=f"layers[{n}].output_padding"
            )
            for a, (o, s_, d) in enumerate(zip(opad, stride, dil)):
                if not 0 <= o < max(s_, d):
                    raise ShapeError(
                        f"layers[{n}] (transposed), axis {a}: output_padding {o} must be in "
                        f"[0, max(stride, dilation)) = [0, {max(s_, d)})"
                    )
            out = tuple(
                conv_transpose_out(*args) for args in zip(size, kernel, stride, pad, opad, dil)
            )
            pads = tuple((p, p) for p in pad)
            macs = _prod(size) * c * cout * _prod(kernel)
            for a in range(ndim):
                chain[a].append(("up", kernel[a], stride[a]))
        else:
            padding = layer.get("padding", "valid")
            if padding == "same" and any(s != 1 for s in stride):
                pads = tuple(same_padding(k, d) for k, d in zip(kernel, dil))
            else:
                pads = tuple(resolve_padding(padding, k, d) for k, d in zip(kernel, dil))
            if pool:
                for a, ((lo, hi), k) in enumerate(zip(pads, kernel)):
                    if max(lo, hi) > k // 2:  # PyTorch's rule, on the kernel, not its extent
                        raise ShapeError(
                            f"layers[{n}] ({kind}), axis {a}: padding ({lo}, {hi}) is more than "
                            f"half the kernel ({k}); PyTorch refuses it. Fix: padding ≤ {k // 2}"
                        )
                if kind == "avgpool" and ndim == 3:
                    for a, (n_, k) in enumerate(zip(size, kernel)):
                        if n_ < k:  # avg_pool3d checks the unpadded input (1D/2D do not)
                            raise ShapeError(
                                f"layers[{n}] (avgpool), axis {a}: input {n_} is smaller than "
                                f"the kernel {k}; PyTorch's 3D average pool refuses it. Fix: "
                                f"kernel_size ≤ {n_} on axis {a}, or a larger input"
                            )
            out = tuple(
                conv_out(n_, k, s, lo, hi, d)
                for n_, k, s, (lo, hi), d in zip(size, kernel, stride, pads, dil)
            )
            opad = None
            macs = 0 if pool else _prod(out) * c * cout * _prod(kernel)
            for a in range(ndim):
                chain[a].append(("down", dil[a] * (kernel[a] - 1) + 1, stride[a]))
        if any(v < 1 for v in out):
            axis = next(a for a, v in enumerate(out) if v < 1)
            raise ShapeError(
                f"layers[{n}] ({kind}), axis {axis}: input {size[axis]} gives output "
                f"{out[axis]} < 1; use padding='same', a smaller kernel or stride, "
                "or a larger input"
            )
        params = 0 if pool else c * cout * _prod(kernel) + cout
        rows.append(
            LayerRow(
                name=f"layers.{n}",
                stage=str(n),
                op=kind,
                kernel=kernel,
                stride=stride,
                padding=pads,
                in_size=size,
                out_size=out,
                in_channels=c,
                out_channels=cout,
                params=params,
                macs=macs,
                output_padding=opad,
                saved=_BYTES * _prod(out) * cout,
            )
        )
        size, c = out, cout
    return Plan(
        rows=tuple(rows),
        input_size=tuple(int(v) for v in input_size),
        output_size=size,
        in_channels=in_channels,
        out_channels=c,
        params=sum(r.params for r in rows),
        macs=sum(r.macs for r in rows),
        receptive_field=tuple(receptive_field(ch) for ch in chain),
        activation_bytes=sum(r.saved for r in rows),
        title=title,
    )


__all__ = ["LayerRow", "Plan", "level_sizes", "plan_layers", "stage_sizes", "unet_min_input_size"]
