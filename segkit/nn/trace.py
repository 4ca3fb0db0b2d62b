"""Plans read off the module itself: the network runs once on the meta device.

A block is written once, as an ``nn.Module`` (:mod:`segkit.nn.blocks`); its rows
of the plan are derived here by running the whole network on meta tensors (shapes
only, no memory, no arithmetic): forward hooks give every row's input and output
size and width, the autograd graph's convolution and matrix-product nodes give
the FLOPs (from the input and weight each keeps, the weight naming its owner),
autograd's saved-tensor hooks give the activation memory kept for backward, and
parameters are the module's.
A row module only says what it is (``plan_op``: label, kernel, stride, padding).

Rows are, in execution order: modules with ``plan_op`` (segkit's own layers),
PyTorch leaves that hold parameters or convolve/pool, and any other module that
does work of its own outside those (e.g. the activation after a residual add, or
the ops a user block runs in its ``forward``), so every parameter, FLOP and
saved byte belongs to exactly one row.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from segkit.errors import ShapeError
from segkit.nn.contract import check_block, shape_of
from segkit.shapes import conv_out, receptive_field

Size = tuple[int, ...]

_LEAF_ROWS = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Linear,
    nn.Upsample,
)
_LOCK = threading.Lock()


@dataclass
class TracedRow:
    """One row of a traced plan (sizes spatial, per sample)."""

    name: str
    op: str
    in_size: Size
    out_size: Size
    in_channels: int
    out_channels: int
    params: int = 0
    flops: int = 0
    saved_bytes: int = 0
    kernel: Size = ()
    stride: Size = ()
    padding: tuple[tuple[int, int], ...] = ()
    output_padding: Size | None = None
    crop: Size | None = None
    rf: list[tuple[str, int, int]] | None = None


@dataclass
class Trace:
    """Everything one meta-device forward pass told about a network."""

    rows: list[TracedRow]
    output_size: Size
    params: int
    flops: int
    saved_bytes: int
    receptive_field: Size


def _graph_flops(outputs: list[torch.Tensor], weight_owner: Any) -> None:
    """FLOPs of every convolution and matrix product in the autograd graph of ``outputs``.

    Each op's node keeps its input and weight (for backward), which is all the count
    needs (PyTorch's own convention: 2 FLOPs per multiply-add, bias not counted); the
    weight, a parameter, tells whose op it was.
    """
    seen: set[int] = set()
    todo = [o.grad_fn for o in outputs if o.grad_fn is not None]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        todo += [n for n, _ in node.next_functions if n is not None]
        kind = type(node).__name__
        if kind.startswith("ConvolutionBackward"):
            x, w = node._saved_input, node._saved_weight
            if node._saved_transposed:
                spatial = math.prod(x.shape[2:])
            else:
                spatial = math.prod(
                    conv_out(n, k, s, p, p, d)
                    for n, k, s, p, d in zip(
                        x.shape[2:],
                        w.shape[2:],
                        node._saved_stride,
                        node._saved_padding,
                        node._saved_dilation,
                    )
                )
            weight_owner(w, 2 * x.shape[0] * spatial * math.prod(w.shape))
        elif kind.startswith("AddmmBackward") or kind.startswith("MmBackward"):
            a, b = node._saved_mat1, node._saved_mat2
            if a is not None and b is not None:
                weight_owner(b, 2 * a.shape[0] * a.shape[1] * b.shape[1])


def _is_leaf_row(module: nn.Module) -> bool:
    if next(module.children(), None) is not None:
        return False
    return isinstance(module, _LEAF_ROWS) or next(module.parameters(False), None) is not None


def _row_roots(net: nn.Module) -> dict[nn.Module, str]:
    roots: dict[nn.Module, str] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        if hasattr(module, "plan_op") or _is_leaf_row(module):
            roots.setdefault(module, prefix)
            return
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", net)
    return roots


def _axes3(values: Any, ndim: int) -> Size:
    if isinstance(values, int):
        return (values,) * ndim
    return tuple(int(v) for v in values)


def _describe_leaf(module: nn.Module, in_size: Size, out_size: Size) -> dict[str, Any]:
    """Label, kernel, stride and padding of a plain PyTorch leaf."""
    ndim = len(in_size)
    label = getattr(module, "plan_label", None)
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = _axes3(module.kernel_size, ndim)
        stride = _axes3(module.stride, ndim)
        dil = _axes3(module.dilation, ndim)
        transposed = module.transposed
        if isinstance(module.padding, str):
            pads = tuple(
                ((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2) for k, d in zip(kernel, dil)
            )
        else:
            pads = tuple((p, p) for p in _axes3(module.padding, ndim))
        if transposed:
            rf = [("up", d * (k - 1) + 1, s) for k, s, d in zip(kernel, stride, dil)]
        else:
            rf = [("down", d * (k - 1) + 1, s) for k, s, d in zip(kernel, stride, dil)]
        op = "transposed conv" if transposed else "conv"
        if module.groups > 1 and module.groups == module.in_channels:
            op += " (depthwise)"
        return {"op": label or op, "kernel": kernel, "stride": stride, "padding": pads, "rf": rf}
    if isinstance(module, nn.modules.pooling._MaxPoolNd | nn.modules.pooling._AvgPoolNd):
        kernel = _axes3(module.kernel_size, ndim)
        stride = _axes3(module.stride or module.kernel_size, ndim)
        pad = _axes3(module.padding, ndim)
        dil = _axes3(getattr(module, "dilation", 1), ndim)
        # what the input effectively gets at the end (ceil mode pads the last window)
        pads = tuple(
            (p, max(p, (o - 1) * s + d * (k - 1) + 1 - n - p))
            for n, o, k, s, p, d in zip(in_size, out_size, kernel, stride, pad, dil)
        )
        op = "maxpool" if isinstance(module, nn.modules.pooling._MaxPoolNd) else "avgpool"
        rf = [("down", d * (k - 1) + 1, s) for k, s, d in zip(kernel, stride, dil)]
        return {"op": label or op, "kernel": kernel, "stride": stride, "padding": pads, "rf": rf}
    return {"op": label or type(module).__name__.lower()}


def trace(net: nn.Module, input_shape: Sequence[int]) -> Trace:
    """Run ``net`` once on a meta tensor of ``input_shape`` (N, C, *S) in training mode.

    FLOPs and saved bytes are per sample (divided by N).

    Raises:
        ShapeError: a user block (marked ``segkit_expect``) does not land on the size
            or width the network needs, or fails on the way, naming block and stage.
    """
    roots = _row_roots(net)
    names = {m: n for n, m in net.named_modules()}
    stack: list[nn.Module] = []
    order: dict[nn.Module, int] = {}
    shapes: dict[nn.Module, tuple] = {}
    flops: dict[nn.Module, int] = {}
    saved: dict[nn.Module, int] = {}
    storages: set[int] = set()

    def owner() -> nn.Module:
        for m in reversed(stack):
            if m in roots:
                return m
        return stack[-1] if stack else net

    def key(t: torch.Tensor) -> int:
        storage = t.untyped_storage()
        return storage._cdata if t.device.type == "meta" else storage.data_ptr()

    param_keys = {key(p) for p in net.parameters()}
    param_owner: dict[int, nn.Module] = {}
    for m in names:
        for p in m.parameters(recurse=False):
            param_owner[key(p)] = m
    for root in roots:
        for p in root.parameters():
            param_owner[key(p)] = root

    def add_flops(weight: torch.Tensor, n: int) -> None:
        m = param_owner.get(key(weight), net)
        flops[m] = flops.get(m, 0) + n

    def pack(t: torch.Tensor) -> torch.Tensor:
        k = key(t)
        if k not in storages and k not in param_keys:
            storages.add(k)
            m = owner()
            saved[m] = saved.get(m, 0) + t.untyped_storage().nbytes()
        return t

    inputs: dict[nn.Module, list[torch.Size]] = {}

    def pre(module: nn.Module, args: tuple) -> None:
        stack.append(module)
        order.setdefault(module, len(order))
        inputs.setdefault(module, [a.shape for a in args if isinstance(a, torch.Tensor)])

    def post(module: nn.Module, args: tuple, out: Any) -> None:
        stack.pop()
        shapes.setdefault(module, (inputs[module], shape_of(out)))
        if hasattr(module, "segkit_expect") and inputs[module]:
            check_block(module, inputs[module][0], out)

    handles = []
    for m in names:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    was_training = net.training
    net.train()
    x = torch.empty(tuple(input_shape), device="meta")
    try:
        with _LOCK, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(x)
            outputs = out if isinstance(out, list | tuple) else [out]
            _graph_flops([o for o in outputs if isinstance(o, torch.Tensor)], add_flops)
    except ShapeError:
        raise
    except Exception as exc:
        blocks = [m for m in stack if hasattr(m, "segkit_expect")]
        if not blocks:
            raise
        raise ShapeError(
            f"{blocks[-1].segkit_expect[3]}: the block failed on an input of "
            f"{'×'.join(map(str, inputs[blocks[-1]][0][2:]))} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)

    batch = int(input_shape[0])
    flops = {m: v // batch for m, v in flops.items()}
    saved = {m: v // batch for m, v in saved.items()}
    rows = _rows(net, roots, names, order, shapes, flops, saved)
    ndim = len(input_shape) - 2
    chains: list[list[tuple[str, int, int]]] = [[] for _ in range(ndim)]
    parallel = [n for m, n in names.items() if getattr(m, "parallel_path", False)]
    for row in rows:
        if row.rf is None or row.name.startswith("heads."):
            continue
        if any(row.name == p or row.name.startswith(p + ".") for p in parallel):
            continue
        for a in range(ndim):
            chains[a].append(row.rf[a])
    params = sum(p.numel() for p in net.parameters())
    out_shape = shape_of(out)
    return Trace(
        rows=rows,
        output_size=tuple(int(v) for v in out_shape[2:]),
        params=params,
        flops=sum(flops.values()),
        saved_bytes=sum(saved.values()),
        receptive_field=tuple(receptive_field(c) for c in chains),
    )


def _rows(
    net: nn.Module,
    roots: dict[nn.Module, str],
    names: dict[nn.Module, str],
    order: dict[nn.Module, int],
    shapes: dict[nn.Module, tuple],
    flops: dict[nn.Module, int],
    saved: dict[nn.Module, int],
) -> list[TracedRow]:
    inside = {m for root in roots for m in root.modules()}
    counted: set[int] = set()

    def params_of(module: nn.Module, recurse: bool) -> int:
        total = 0
        for p in module.parameters(recurse):
            if id(p) not in counted:
                counted.add(id(p))
                total += p.numel()
        return total

    owners = [m for m in roots if m in order]
    owners += [
        m
        for m in names
        if m not in inside
        and m in order
        and (flops.get(m) or saved.get(m) or next(m.parameters(False), None) is not None)
    ]
    rows = []
    for m in sorted(owners, key=lambda m: order[m]):
        tensors, out_shape = shapes[m]
        i = min(getattr(m, "plan_input", 0), len(tensors) - 1)
        in_shape = tensors[i] if tensors else out_shape
        in_size = tuple(int(v) for v in in_shape[2:])
        out_size = tuple(int(v) for v in out_shape[2:])
        if m in roots:
            desc = m.plan_op(in_size, out_size) if hasattr(m, "plan_op") else None
            desc = desc or _describe_leaf(m, in_size, out_size)
            n_params = params_of(m, True)
        else:
            desc = {"op": getattr(m, "plan_label", None) or type(m).__name__.lower()}
            n_params = params_of(m, False)
        name = names[m] or type(net).__name__
        rows.append(
            TracedRow(
                name=name,
                op=desc["op"],
                in_size=in_size,
                out_size=out_size,
                in_channels=int(in_shape[1]),
                out_channels=int(out_shape[1]),
                params=n_params,
                flops=flops.get(m, 0),
                saved_bytes=saved.get(m, 0),
                kernel=tuple(desc.get("kernel", ())),
                stride=tuple(desc.get("stride", ())),
                padding=tuple(desc.get("padding", ())),
                output_padding=desc.get("output_padding"),
                crop=desc.get("crop"),
                rf=desc.get("rf"),
            )
        )
    return rows


__all__ = ["Trace", "TracedRow", "trace"]
