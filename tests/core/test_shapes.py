"""The shape algebra: closed forms checked against PyTorch and against each other."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from segkit.shapes import (
    Downsample,
    conv_out,
    conv_transpose_out,
    fit_transposed,
    min_input_size,
    receptive_field,
    same_padding,
)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "dil"),
    list(itertools.product([1, 2, 7, 28, 33], [1, 2, 3, 4, 5], [1, 2, 3], [0, 1, 2], [1, 2])),
)
def test_conv_out_matches_torch(size, kernel, stride, pad, dil):
    expected = conv_out(size, kernel, stride, pad, pad, dil)
    x = torch.zeros(1, 1, size)
    w = torch.zeros(1, 1, kernel)
    if expected < 1:
        with pytest.raises(RuntimeError):
            F.conv1d(x, w, stride=stride, padding=pad, dilation=dil)
    else:
        assert F.conv1d(x, w, stride=stride, padding=pad, dilation=dil).shape[-1] == expected


@given(
    st.integers(1, 50),
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(1, 2),
)
def test_conv_transpose_out_matches_torch(size, kernel, stride, pad, opad, dil):
    opad = opad % max(stride, dil)
    expected = conv_transpose_out(size, kernel, stride, pad, opad, dil)
    x = torch.zeros(1, 1, size)
    w = torch.zeros(1, 1, kernel)
    if expected < 1:
        return
    y = F.conv_transpose1d(x, w, stride=stride, padding=pad, output_padding=opad, dilation=dil)
    assert y.shape[-1] == expected


@given(st.integers(1, 300), st.integers(1, 7), st.integers(1, 4), st.integers(1, 3))
def test_same_padding_gives_ceil(size, kernel, stride, dil):
    lo, hi = same_padding(kernel, dil)
    assert hi - lo in (0, 1)
    assert conv_out(size, kernel, stride, lo, hi, dil) == -(-size // stride)


@given(
    st.integers(1, 400),
    st.integers(1, 7),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 7),
    st.booleans(),
)
def test_fit_transposed_restores_every_size(skip, kernel, stride, dil, up, pooling):
    if skip < stride:
        return
    down = (
        Downsample(stride, stride)
        if pooling
        else Downsample(kernel, stride, *same_padding(kernel, dil), dil)
    )
    fit = fit_transposed(skip, down, up)
    assert 0 <= fit.output_padding < stride or fit.output_padding == 0
    out = conv_transpose_out(down.out(skip), up, stride, fit.padding, fit.output_padding)
    assert out - fit.crop == skip


def test_design_identity_symmetric_case_needs_no_crop():
    # p_u = p_e + (u − e)/2 when u − e is even: 3×3 stride-2 conv undone by a 3×3 transposed conv
    down = Downsample(3, 2, 1, 1)
    for skip in range(2, 200):
        fit = fit_transposed(skip, down, 3)
        assert fit.padding == 1 and fit.crop == 0
        assert fit.output_padding == (skip + 2 - 3) % 2


def test_pool_then_transposed_is_the_seed_article_case():
    down = Downsample(2, 2)
    for skip in range(2, 100):
        fit = fit_transposed(skip, down, 2)
        assert (fit.padding, fit.output_padding, fit.crop) == (0, skip % 2, 0)


def test_min_input_size_is_tight():
    downs = [Downsample(3, 2, 1, 1)] * 5
    m = min_input_size(downs)
    assert m == 17

    def ok(n):
        for d in downs:
            if n < d.stride:
                return False
            n = d.out(n)
        return n >= 1

    assert ok(m) and not ok(m - 1)
    assert min_input_size([Downsample(2, 2)] * 5) == 32


def test_receptive_field_of_simple_chains():
    assert receptive_field([("down", 3, 1)] * 2) == 5
    assert receptive_field([("down", 3, 1), ("down", 2, 2), ("down", 3, 1)]) == 8


def test_nnunet_case_keeps_one_padding_and_crops_the_last_voxel_on_odd_sizes():
    # 3×3 stride-2 conv undone by a 2×2 transposed conv (P + u − e = 1, odd): even sizes
    # take PlainConvUNet's (padding 0, output_padding 0); odd sizes keep padding 0 (the same
    # grid: upsampled voxel 2i+j comes from voxel i) and crop the one extra voxel at the end.
    # (padding 1, output_padding 1) would fit odd sizes too, on a grid shifted by one voxel.
    down = Downsample(3, 2, 1, 1)
    for skip in range(2, 300):
        fit = fit_transposed(skip, down, 2)
        assert fit.padding == 0
        assert (fit.output_padding, fit.crop) == ((0, 0) if skip % 2 == 0 else (0, 1))


def test_crop_only_where_no_padding_pair_exists():
    # stride 1 with P + u − e odd: output_padding must be 0, so one voxel is cropped
    fit = fit_transposed(10, Downsample(3, 1, 1, 1), 2)
    assert (fit.output_padding, fit.crop) == (0, 1)
