"""Plans: the seed article's examples, explicit stacks, totals and the memory estimate."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segkit import ShapeError
from segkit.nn import UNet
from segkit.nn.stack import _Pad, build_stack
from segkit.plan import plan_layers, plan_unet
from segkit.spec import UNetSpec
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


def _padding(draw):
    return draw(
        st.one_of(
            st.sampled_from(["same", "valid"]),
            st.integers(0, 2),
            st.lists(st.integers(0, 2), min_size=2, max_size=2),
        )
    )


@st.composite
def explicit_layer(draw):
    """Every argument an explicit layer accepts (plan_layers' docstring), valid or not."""
    kind = draw(st.sampled_from(["conv", "maxpool", "avgpool", "transposed"]))
    layer = dict(type=kind, kernel_size=draw(st.integers(1, 4)))
    if draw(st.booleans()):
        layer["stride"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        layer["dilation"] = draw(st.integers(1, 2))
    if kind == "transposed":
        layer["padding"] = draw(st.integers(0, 2))
        layer["output_padding"] = draw(st.integers(0, 2))
    elif draw(st.booleans()):
        layer["padding"] = _padding(draw)
    if kind in ("conv", "transposed") and draw(st.booleans()):
        layer["out_channels"] = draw(st.integers(1, 3))
    return layer


def _check_generated_stack(data):
    ndim = data.draw(st.sampled_from([1, 2, 3]))
    size = tuple(data.draw(st.integers(6, 24)) for _ in range(ndim))
    layers = data.draw(st.lists(explicit_layer(), min_size=1, max_size=4))
    try:
        plan = plan_layers(size, 2, layers)
    except ShapeError:
        return  # refused with a message, never a PyTorch error (checked below for the rest)
    sizes = _layer_sizes(size, 2, layers)
    assert sizes == [(r.out_size, r.out_channels) for r in plan.rows]


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
