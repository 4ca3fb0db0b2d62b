"""Static plans: every layer's padding, output_padding and sizes before anything runs.

:func:`plan_unet` solves a :class:`~segkit.spec.UNetSpec` for one input size;
:func:`plan_layers` describes an explicit stack of layers (the seed article's
examples). Both return a :class:`Plan`, which renders as a table or a dict.
The U-Net module runs the very same arithmetic on every forward pass, so a plan
and a forward pass cannot disagree (tests check it with hooks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from segkit.errors import ShapeError
from segkit.shapes import (
    conv_out,
    conv_transpose_out,
    fit_transposed,
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
_NORM_PARAMS = {"instance": 2, "batch": 2, "group": 2, "none": 0}


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
    saved: int = 0  # activation elements autograd keeps for backward (per sample)


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


def _conv_row(
    name: str,
    stage: str,
    spec: UNetSpec,
    level: int,
    size: Size,
    cin: int,
    cout: int,
    stride: Size,
    *,
    act: bool = True,
    op: str = "conv",
) -> LayerRow:
    pads = spec.conv_padding(level)
    kernel, dil = spec.kernel_size[level], spec.dilation[level]
    out = tuple(
        conv_out(n, k, s, lo, hi, d)
        for n, k, s, (lo, hi), d in zip(size, kernel, stride, pads, dil, strict=True)
    )
    norm = spec.norm[0]
    params = cin * cout * _prod(kernel) + (cout if spec.conv_bias else 0)
    params += _NORM_PARAMS[norm] * cout
    if spec.act[0] == "prelu" and act:
        params += 1
    per_out = 2 if norm != "none" else 1
    if not act and norm == "none":
        per_out = 1
    if spec.dropout and act:
        per_out += 1
    return LayerRow(
        name=name,
        stage=stage,
        op=op,
        kernel=kernel,
        stride=stride,
        padding=pads,
        in_size=size,
        out_size=out,
        in_channels=cin,
        out_channels=cout,
        params=params,
        macs=_prod(out) * cin * cout * _prod(kernel),
        saved=per_out * _prod(out) * cout,
    )


def _block_rows(
    prefix: str,
    stage: str,
    spec: UNetSpec,
    level: int,
    size: Size,
    cin: int,
    cout: int,
    n_convs: int,
    stride: Size,
) -> list[LayerRow]:
    rows = []
    c, cur = cin, size
    residual = spec.block == "residual"
    for j in range(n_convs):
        last = j == n_convs - 1
        row = _conv_row(
            f"{prefix}.convs.{j}",
            stage,
            spec,
            level,
            cur,
            c,
            cout,
            stride if j == 0 else (1,) * len(size),
            act=not (residual and last),
        )
        rows.append(row)
        c, cur = cout, row.out_size
    if residual and spec.act[0] == "prelu":  # the activation after the residual add
        rows[-1] = replace(rows[-1], params=rows[-1].params + 1)
    if residual and (cin != cout or any(s != 1 for s in stride)):
        out = tuple(conv_out(n, 1, s) for n, s in zip(size, stride))
        norm = spec.norm[0]
        rows.append(
            LayerRow(
                name=f"{prefix}.shortcut",
                stage=stage,
                op="conv 1×1 (shortcut)",
                kernel=(1,) * len(size),
                stride=stride,
                padding=((0, 0),) * len(size),
                in_size=size,
                out_size=out,
                in_channels=cin,
                out_channels=cout,
                params=cin * cout + (cout if spec.conv_bias else 0) + _NORM_PARAMS[norm] * cout,
                macs=_prod(out) * cin * cout,
                saved=(_prod(out) * cout if norm != "none" else 0),
            )
        )
    return rows


def plan_unet(spec: UNetSpec, input_size: Sequence[int], *, title: str = "") -> Plan:
    """Solve every layer of ``spec`` at ``input_size``.

    Raises:
        ShapeError: the input is too small for some level, naming the stage,
            the axis, the sizes and the fix (smallest valid size, largest depth).
    """
    size: Size = tuple(int(v) for v in input_size)
    _check_input(spec, size)
    ndim = spec.spatial_dims
    minimum = unet_min_input_size(spec)
    rows: list[LayerRow] = []
    skips: list[Size] = []
    cur, cin = size, spec.in_channels
    for i in range(spec.depth):
        stride = spec.strides[i]
        if i > 0:
            for a in range(ndim):
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
        if spec.pooling and i > 0:
            out = tuple(conv_out(n, s, s) for n, s in zip(cur, stride))
            extra = 2 if spec.downsample == "maxpool" else 0  # int64 indices
            rows.append(
                LayerRow(
                    name=f"encoder.{i}.down",
                    stage=f"enc{i}",
                    op=spec.downsample,
                    kernel=stride,
                    stride=stride,
                    padding=((0, 0),) * ndim,
                    in_size=cur,
                    out_size=out,
                    in_channels=cin,
                    out_channels=cin,
                    saved=extra * _prod(out) * cin,
                )
            )
            cur, conv_stride = out, (1,) * ndim
        else:
            conv_stride = stride
        block = _block_rows(
            f"encoder.{i}.block",
            f"enc{i}",
            spec,
            i,
            cur,
            cin,
            spec.channels[i],
            spec.convs_per_stage[i],
            conv_stride,
        )
        rows += block
        cur, cin = _block_out(block), spec.channels[i]
        skips.append(cur)
    _check_norm(spec, skips, size, minimum)

    for i in range(spec.depth - 2, -1, -1):
        cout = spec.channels[i]
        skip = skips[i]
        rows.append(_up_row(spec, i, cur, skip, cin, cout))
        rows.append(
            LayerRow(
                name=f"decoder.{i}.cat",
                stage=f"dec{i}",
                op="concat skip",
                kernel=(),
                stride=(),
                padding=(),
                in_size=skip,
                out_size=skip,
                in_channels=cout,
                out_channels=2 * cout,
                saved=_prod(skip) * 2 * cout,
            )
        )
        block = _block_rows(
            f"decoder.{i}.block",
            f"dec{i}",
            spec,
            i,
            skip,
            2 * cout,
            cout,
            spec.convs_per_stage_decoder[i],
            (1,) * ndim,
        )
        rows += block
        cur, cin = _block_out(block), cout
        if i == 0 or spec.deep_supervision:
            rows.append(_head_row(spec, i, cur, cout))
    if spec.depth == 1:
        rows.append(_head_row(spec, 0, cur, cin))
    if cur != size:  # cannot happen: the solver is exact; guard the invariant loudly
        raise AssertionError(f"internal error: plan output {cur} != input {size}")
    return Plan(
        rows=tuple(rows),
        input_size=size,
        output_size=cur,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        params=sum(r.params for r in rows),
        macs=sum(r.macs for r in rows),
        receptive_field=_unet_rf(spec),
        activation_bytes=_BYTES * (sum(r.saved for r in rows) + _prod(size) * spec.in_channels),
        min_input_size=minimum,
        title=title,
    )


def _block_out(block: list[LayerRow]) -> Size:
    return next(r.out_size for r in reversed(block) if ".convs." in r.name)


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
    downs = [spec.downsamples(i)[axis] for i in range(1, spec.depth)]
    n = start
    while True:
        cur = n
        for d in downs:
            cur = d.out(cur)
        if cur >= 2:
            return n
        n += 1


def _up_row(spec: UNetSpec, level: int, size: Size, skip: Size, cin: int, cout: int) -> LayerRow:
    """Upsampling from stage ``level + 1`` to the skip of stage ``level``."""
    ndim = spec.spatial_dims
    stride = spec.strides[level + 1]
    common = dict(
        name=f"decoder.{level}.up",
        stage=f"dec{level}",
        stride=stride,
        in_size=size,
        out_size=skip,
        in_channels=cin,
        out_channels=cout,
    )
    if spec.upsample == "interpolate":
        return LayerRow(
            op=f"interp ({spec.interp_mode}) + conv 1×1",
            kernel=(1,) * ndim,
            padding=((0, 0),) * ndim,
            params=cin * cout + (cout if spec.conv_bias else 0),
            macs=_prod(skip) * cin * cout,
            saved=_prod(skip) * cin,
            **common,
        )
    kernel = spec.up_kernel_size[level]
    downs = spec.downsamples(level + 1)
    fits = [fit_transposed(n, d, u) for n, d, u in zip(skip, downs, kernel, strict=True)]
    raw = tuple(
        conv_transpose_out(n, u, s, f.padding, f.output_padding)
        for n, u, s, f in zip(size, kernel, stride, fits, strict=True)
    )
    if tuple(r - f.crop for r, f in zip(raw, fits)) != skip:  # invariant of fit_transposed
        raise AssertionError(f"internal error: transposed conv {raw} does not fit skip {skip}")
    return LayerRow(
        op="transposed conv",
        kernel=kernel,
        padding=tuple((f.padding, f.padding) for f in fits),
        output_padding=tuple(f.output_padding for f in fits),
        crop=tuple(f.crop for f in fits),
        params=cin * cout * _prod(kernel) + (cout if spec.conv_bias else 0),
        macs=_prod(size) * cin * cout * _prod(kernel),
        **common,
    )


def _head_row(spec: UNetSpec, level: int, size: Size, cin: int) -> LayerRow:
    ndim = spec.spatial_dims
    cout = spec.out_channels
    return LayerRow(
        name=f"heads.{level}",
        stage="head" if level == 0 else f"ds{level}",
        op="conv 1×1 (logits)",
        kernel=(1,) * ndim,
        stride=(1,) * ndim,
        padding=((0, 0),) * ndim,
        in_size=size,
        out_size=size,
        in_channels=cin,
        out_channels=cout,
        params=cin * cout + cout,
        macs=_prod(size) * cin * cout,
        saved=_prod(size) * cout,
    )


def _unet_rf(spec: UNetSpec) -> Size:
    """Receptive field of one output voxel through the deepest path."""
    out = []
    for a in range(spec.spatial_dims):
        chain: list[tuple[str, int, int]] = []
        for i in range(spec.depth):
            e = spec.dilation[i][a] * (spec.kernel_size[i][a] - 1) + 1
            s = spec.strides[i][a]
            if spec.pooling:
                if i > 0:
                    chain.append(("down", s, s))
                chain += [("down", e, 1)] * spec.convs_per_stage[i]
            else:
                chain.append(("down", e, s))
                chain += [("down", e, 1)] * (spec.convs_per_stage[i] - 1)
        for i in range(spec.depth - 2, -1, -1):
            s = spec.strides[i + 1][a]
            u = 2 * s if spec.upsample == "interpolate" else spec.up_kernel_size[i][a]
            chain.append(("up", u, s))
            e = spec.dilation[i][a] * (spec.kernel_size[i][a] - 1) + 1
            chain += [("down", e, 1)] * spec.convs_per_stage_decoder[i]
        out.append(receptive_field(chain))
    return tuple(out)


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
        cout = c if pool else int(layer.get("out_channels", c))
        if kind == "transposed":
            pad = to_tuple(layer.get("padding", 0), ndim, name=f"layers[{n}].padding")
            opad = to_tuple(
                layer.get("output_padding", 0), ndim, name=f"layers[{n}].output_padding"
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
                saved=_prod(out) * cout,
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
        activation_bytes=_BYTES * sum(r.saved for r in rows),
        title=title,
    )


__all__ = ["LayerRow", "Plan", "plan_layers", "plan_unet", "unet_min_input_size"]
