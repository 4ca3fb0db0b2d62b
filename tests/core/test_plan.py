"""Plans: the seed article's examples, explicit stacks, totals and the memory estimate."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from segkit import ShapeError
from segkit.nn import UNet, plan_unet
from segkit.nn.stack import _Pad, build_stack
from segkit.plan import plan_layers
from segkit.spec import UNetSpec
from tests.core.strategies import explicit_layer
from tests.utils import autograd_saved_bytes


def _check_against_torch(size, cin, layers):
    plan = plan_layers(size, cin, layers)
    out = build_stack(size, cin, layers)(torch.randn(1, cin, *size))
    assert out.shape == (1, plan.out_channels, *plan.output_size)
    return plan


def test_seed_article_valid_stride_2():
    plan = _check_against_torch(
        (28, 28), 3, [dict(type="conv", out_channels=16, kernel_size=3, stride=2, padding="valid")]
    )
    assert plan.output_size == (13, 13) and plan.out_channels == 16


def test_seed_article_same_stride_1():
    plan = _check_against_torch(
        (28, 28), 3, [dict(type="conv", out_channels=16, kernel_size=3, stride=1, padding="same")]
    )
    assert plan.output_size == (28, 28) and plan.out_channels == 16


def test_seed_article_conv_pool_transposed():
    plan = _check_against_torch(
        (28, 28),
        3,
        [
            dict(type="conv", out_channels=16, kernel_size=3, padding="same"),
            dict(type="maxpool", kernel_size=2),
            dict(type="transposed", out_channels=3, kernel_size=2, stride=2),
        ],
    )
    sizes = [(r.out_size, r.out_channels) for r in plan.rows]
    assert sizes == [((28, 28), 16), ((14, 14), 16), ((28, 28), 3)]
    assert "28×28 → 14×14" in plan.table()


def _layer_sizes(size, cin, layers):
    """Each layer's output size as PyTorch computes it (explicit F.pad modules folded in)."""
    stack = build_stack(size, cin, layers)
    x, sizes = torch.randn(1, cin, *size), []
    for module in stack:
        x = module(x)
        if not isinstance(module, _Pad):
            sizes.append((tuple(x.shape[2:]), x.shape[1]))
    return sizes


def test_pool_stride_and_padding_are_built_as_planned():
    # issue 10: build_stack dropped the pool's stride and padding (plan 14×14, module 9×9)
    layers = [dict(type="maxpool", kernel_size=3, stride=2, padding=1)]
    plan = plan_layers((28, 28), 1, layers)
    assert plan.output_size == (14, 14)
    assert _layer_sizes((28, 28), 1, layers) == [((14, 14), 1)]
    avg = [dict(type="avgpool", kernel_size=2, stride=1, padding=[0, 1])]
    assert plan_layers((9, 9), 1, avg).output_size == (9, 9) == _layer_sizes((9, 9), 1, avg)[0][0]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _args(layer):
    """A layer's arguments as the user wrote them, defaults filled in (plan_layers' docstring)."""
    kind = layer.get("type", "conv")
    k = layer["kernel_size"]
    pool = kind in ("maxpool", "avgpool")
    s, d = layer.get("stride", k if pool else 1), layer.get("dilation", 1)
    e = d * (k - 1) + 1
    padding = layer.get("padding", 0 if kind == "transposed" else "valid")
    if padding == "same":  # total e − 1, the odd voxel last
        lo, hi = (e - 1) // 2, e - 1 - (e - 1) // 2
    elif padding == "valid":
        lo = hi = 0
    elif isinstance(padding, int):
        lo = hi = padding
    else:
        lo, hi = padding
    return kind, k, s, d, e, lo, hi


def _reference(x, layer):
    """The layer run by PyTorch itself from the user's arguments (no segkit code involved).

    PyTorch pads a pool symmetrically only, so an asymmetric pool padding is an explicit
    pad (−inf before a max pool), after PyTorch's own limit has been applied to the larger
    side.
    """
    kind, k, s, d, _, lo, hi = _args(layer)
    ndim, cin = x.dim() - 2, x.shape[1]
    cout = cin if kind in ("maxpool", "avgpool") else layer.get("out_channels", cin)
    if kind == "transposed":
        op = layer.get("output_padding", 0)
        w = torch.zeros(cin, cout, *(k,) * ndim)
        return _CONV_T[ndim](x, w, stride=s, padding=lo, output_padding=op, dilation=d)
    if kind == "conv":
        w = torch.zeros(cout, cin, *(k,) * ndim)
        return _CONV[ndim](F.pad(x, [lo, hi] * ndim), w, stride=s, dilation=d)
    if kind == "avgpool":
        extra = {} if d == 1 else {"dilation": d}  # nn.AvgPoolNd has no such argument
        pool = getattr(torch.nn, f"AvgPool{ndim}d")
        if lo != hi:
            pool(k, s, max(lo, hi), **extra)(x)  # raises where PyTorch's limit is broken
            x, lo = F.pad(x, [lo, hi] * ndim), 0
        return pool(k, s, lo, **extra)(x)
    if lo != hi:
        _MAX[ndim](x, k, s, max(lo, hi), d)  # raises where PyTorch's limit is broken
        x, lo = F.pad(x, [lo, hi] * ndim, value=float("-inf")), 0
    return _MAX[ndim](x, k, s, lo, d)


def _closed_form_out(n, layer):
    """Output size along one axis: the floor rule, or the transposed-conv formula."""
    kind, k, s, d, e, lo, hi = _args(layer)
    if kind == "transposed":
        return (n - 1) * s - 2 * lo + e + layer.get("output_padding", 0)
    return (n + lo + hi - e) // s + 1


def test_3d_avgpool_on_an_input_smaller_than_its_kernel_is_refused_as_pytorch_does():
    layers = [dict(type="avgpool", kernel_size=3, padding=1)]
    with pytest.raises(RuntimeError, match="smaller than kernel size"):
        _reference(torch.zeros(1, 1, 2, 2, 2), layers[0])
    assert F.avg_pool2d(torch.zeros(1, 1, 2, 2), 3, 3, 1).shape[2:] == (1, 1)  # 2D accepts
    with pytest.raises(ShapeError, match=r"layers\[0\] \(avgpool\)"):
        plan_layers((2, 2, 2), 1, layers)


_INFEASIBLE = re.compile(r"axis (\d+): input (\d+) gives output (-?\d+) < 1")


def _check_refusal(exc, x, layers):
    """A refusal names its layer, and PyTorch refuses that layer too; or the layer truly
    shrinks to nothing, as the message says with the closed form's sizes."""
    msg = str(exc)
    where = re.match(r"layers\[(\d+)\] \((\w+)\)", msg)
    assert where, msg
    n = int(where[1])
    assert where[2] == layers[n].get("type", "conv"), msg
    for layer in layers[:n]:  # PyTorch accepts every layer before the refused one
        x = _reference(x, layer)
    infeasible = _INFEASIBLE.search(msg)
    try:
        y = _reference(x, layers[n])
    except (RuntimeError, ValueError, TypeError):
        pass  # PyTorch refuses it too
    else:  # or gives an empty tensor (a transposed conv to 0 voxels): no voxel either way
        assert infeasible and y.numel() == 0, (msg, tuple(y.shape))
    if infeasible:
        axis, size, out = map(int, infeasible.groups())
        outs = [_closed_form_out(v, layers[n]) for v in x.shape[2:]]
        assert size == x.shape[2 + axis], msg
        assert out == outs[axis] < 1 and all(v >= 1 for v in outs[:axis]), (msg, outs)
    return "infeasible" if infeasible else re.sub(r"\d+", "#", msg.split(":")[1][:40])


def _check_generated_stack(data):
    ndim = data.draw(st.sampled_from([1, 2, 3]))
    size = tuple(data.draw(st.integers(6, 24)) for _ in range(ndim))
    layers = data.draw(st.lists(explicit_layer(), min_size=1, max_size=4))
    x = torch.zeros(1, 2, *size)
    try:
        plan = plan_layers(size, 2, layers)
    except ShapeError as exc:
        return _check_refusal(exc, x, layers)
    for row, layer in zip(plan.rows, layers, strict=True):  # PyTorch on the user's arguments
        assert tuple(x.shape[2:]) == row.in_size
        x = _reference(x, layer)
        assert (tuple(x.shape[2:]), x.shape[1]) == (row.out_size, row.out_channels), layer
    sizes = _layer_sizes(size, 2, layers)  # and the module segkit builds from the plan
    assert sizes == [(r.out_size, r.out_channels) for r in plan.rows]
    return "accepted"


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_generated_stacks_match_torch(data):
    _check_generated_stack(data)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_generated_stacks_match_torch_long(data):
    _check_generated_stack(data)


def test_stack_that_shrinks_to_nothing_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"layers\[1\] \(conv\), axis 0"):
        plan_layers((5, 5), 1, [dict(type="conv", kernel_size=3), dict(type="conv", kernel_size=5)])


def test_plan_totals_and_dict():
    spec = UNetSpec.from_config(depth=4, channels=8, in_channels=1, out_channels=3)
    net = UNet(spec)
    plan = net.plan((37, 45, 29))
    assert plan.params == sum(p.numel() for p in net.parameters())
    assert plan.output_size == (37, 45, 29)
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["rows"][0]["name"] == "encoder.0.blocks.0.convs.0"
    # conv MACs: output voxels × cin × cout × kernel volume
    assert d["rows"][0]["macs"] == 37 * 45 * 29 * 1 * 8 * 27
    assert plan.receptive_field == (75, 75, 75)
    assert "receptive field   75×75×75" in plan.table()


@pytest.mark.parametrize(
    "cfg",
    [
        dict(depth=4, channels=8),
        dict(depth=3, channels=8, block="residual", downsample="maxpool"),
        dict(depth=3, channels=8, upsample="interpolate", norm="none", act="relu"),
    ],
)
def test_activation_memory_estimate_within_15_percent_of_autograd(cfg):
    spec = UNetSpec.from_config(dict(cfg, in_channels=1, out_channels=2, deep_supervision=False))
    net = UNet(spec)
    size = (33, 40, 27)
    x = torch.randn(1, 1, *size, requires_grad=False)
    measured = autograd_saved_bytes(net, x)
    estimate = plan_unet(spec, size).activation_bytes
    assert abs(estimate - measured) / measured < 0.15, (estimate, measured)
