"""U-Net plans checked against what the plan did not compute.

The plan's rows are read off the traced module, so comparing them with hooks of that
module proves nothing. Here every row is checked against (a) the module's parameter
count (the rows must account for every parameter), (b) the closed forms of DESIGN.md's
shape algebra, written out below from the spec alone (no :mod:`segkit.shapes`), and
(c) PyTorch's own convolution, pooling and transposed convolution run on a zero tensor
of the row's input size with the row's kernel, stride and padding. The closed form of
the decoder is itself checked against a brute-force search with PyTorch.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from segkit import ShapeError
from segkit.nn import UNet, plan_unet
from segkit.plan import unet_min_input_size
from segkit.shapes import Downsample, fit_transposed
from tests.core.strategies import specs

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# ----------------------------------------------------------- closed forms (DESIGN.md)


def _extent(k: int, d: int) -> int:
    return d * (k - 1) + 1


def _same(e: int) -> tuple[int, int]:
    """Encoder padding: total e − 1, the odd voxel last for an even effective kernel."""
    return (e - 1) // 2, e - 1 - (e - 1) // 2


def _down(n: int, e: int, s: int, lo: int, hi: int) -> int:
    return (n + lo + hi - e) // s + 1


def _pooling(spec) -> bool:
    return spec.downsample in ("maxpool", "avgpool")


def _level_down(spec, level: int, axis: int) -> tuple[int, int, int]:
    """``(e, s, P)`` of the downsampling into ``level`` along ``axis``."""
    s = spec.strides[level][axis]
    if _pooling(spec):
        return s, s, 0
    e = _extent(spec.kernel_size[level][axis], spec.dilation[level][axis])
    return e, s, e - 1


def _stage_sizes(spec, size):
    """Every stage's output size: ceil(S/s) after a "same" strided conv, floor after a pool."""
    sizes, cur = [tuple(size)], tuple(size)
    for level in range(1, spec.depth):
        nxt = []
        for a, n in enumerate(cur):
            e, s, total = _level_down(spec, level, a)
            nxt.append(_down(n, e, s, total // 2, total - total // 2))
        cur = tuple(nxt)
        sizes.append(cur)
    return sizes


def _transposed(skip: int, e: int, s: int, total: int, u: int) -> tuple[int, int, int]:
    """``(padding, output_padding, crop)`` of a transposed conv ``(u, s)`` undoing ``(e, s, P)``.

    With ``T = P + u − e`` and ``r = (S + P − e) mod s`` the output is
    ``S + T − 2p + (op − r)``. The padding is one value for every size,
    ``p = max(0, ⌊T/2⌋)`` (it sets where each upsampled voxel lands: the same grid at
    every size). ``op`` only adds voxels at the end and solves ``op = r − (T − 2p)``
    where that lies in ``[0, s)``: always for ``T`` even (DESIGN.md's identity), for ``T``
    odd when ``r ≥ 1``, for ``T < 0`` (an up kernel smaller than the stride) when
    ``r − T < s``. Otherwise ``op`` is the nearest value in ``[0, s)`` and the rest is
    cropped at the end (negative: padded).
    """
    t, r = total + u - e, (skip + total - e) % s
    p = max(0, t // 2)
    op = r - (t - 2 * p)
    if 0 <= op < s:
        return p, op, 0
    op = min(max(op, 0), s - 1)
    return p, op, skip + t - 2 * p + op - r - skip


def _pairs(inner: int, s: int, u: int) -> dict[tuple[int, int], int]:
    """Output size of every (padding, output_padding) PyTorch accepts, run by PyTorch."""
    x, w = torch.zeros(1, 1, inner), torch.zeros(1, 1, u)
    sizes = {}
    for p, op in itertools.product(range(u + s + 1), range(s)):
        if (inner - 1) * s - 2 * p + u + op >= 1:  # below that PyTorch raises
            y = F.conv_transpose1d(x, w, stride=s, padding=p, output_padding=op)
            sizes[p, op] = y.shape[-1]
    return sizes


_DOWNS = [  # (e, s, P): "same" strided convs of kernel 1–5, dilation 1–2, and pools
    *(
        (_extent(k, d), s, _extent(k, d) - 1)
        for k in range(1, 6)
        for d in (1, 2)
        for s in (1, 2, 3)
    ),
    *((s, s, 0) for s in (1, 2, 3)),
]


def test_transposed_closed_form_against_a_brute_force_search_with_torch():
    """The test's own closed form, checked against every (p, op) PyTorch accepts."""
    for (e, s, total), u in itertools.product(_DOWNS, range(1, 6)):
        for skip in range(s, 3 * s + 3):  # every remainder, twice
            inner = _down(skip, e, s, total // 2, total - total // 2)
            sizes = _pairs(inner, s, u)
            p, op, crop = _transposed(skip, e, s, total, u)
            assert sizes[p, op] - crop == skip, (e, s, total, u, skip)
            assert p == max(0, (total + u - e) // 2)  # one padding (grid) for every size
            # a crop exactly where no op lands on the skip, the least with that padding
            best = min(abs(n - skip) for (q, _), n in sizes.items() if q == p)
            assert abs(crop) == best, (e, s, total, u, skip, crop, best)


def test_an_exact_pair_is_used_when_the_up_kernel_is_smaller_than_the_pool():
    for s, u in ((2, 1), (3, 1), (3, 2)):
        for skip in range(s, 4 * s):
            sizes = _pairs(skip // s, s, u)
            fit = fit_transposed(skip, Downsample(s, s), u)
            if skip in sizes.values():
                assert fit.crop == 0, (s, u, skip, fit, sizes)


# ------------------------------------------------------------------- row by row


def _level(name: str) -> int:
    return int(name.split(".")[1])


def _expected(spec, row, skips) -> dict:
    """What the closed forms say about ``row``: padding, output_padding, crop, out size."""
    ndim, name, op = spec.spatial_dims, row.name, row.op
    ones = (1,) * ndim
    level = _level(name)
    if "transposed" in op:
        u = ones if name.endswith(".shortcut") else spec.up_kernel_size[level]
        fits = [
            _transposed(skips[level][a], *_level_down(spec, level + 1, a), u[a])
            for a in range(ndim)
        ]
        return {
            "kernel": tuple(u),
            "stride": spec.strides[level + 1],
            "padding": tuple((p, p) for p, _, _ in fits),
            "output_padding": tuple(o for _, o, _ in fits),
            "crop": tuple(c for _, _, c in fits),
            "in_size": skips[level + 1],
            "out_size": skips[level],
        }
    if op.startswith("interp"):
        return {"padding": ((0, 0),) * ndim, "in_size": skips[level + 1], "out_size": skips[level]}
    if "avgpool (ceil)" in op:  # ResNet-D shortcut: pad the end to a multiple of the stride
        s = spec.strides[level]
        pads = tuple((0, -(-n // s_) * s_ - n) for n, s_ in zip(skips[level - 1], s))
        out = tuple(_down(n, k, k, lo, hi) for n, k, (lo, hi) in zip(skips[level - 1], s, pads))
        return {"kernel": s, "stride": s, "padding": pads, "out_size": out}
    if op in ("maxpool", "avgpool"):
        s = spec.strides[level]
        out = tuple(_down(n, k, k, 0, 0) for n, k in zip(skips[level - 1], s))
        return {"kernel": s, "stride": s, "padding": ((0, 0),) * ndim, "out_size": out}
    if op.startswith("conv"):
        stage = spec.kernel_size[level]
        assert row.kernel in (stage, ones), (name, row.kernel)
        assert row.stride in (spec.strides[level], ones), (name, row.stride)
        dil = spec.dilation[level] if row.kernel == stage else ones
        pads = tuple(_same(_extent(k, d)) for k, d in zip(row.kernel, dil))
        out = tuple(
            _down(n, _extent(k, d), s, lo, hi)
            for n, k, d, s, (lo, hi) in zip(row.in_size, row.kernel, dil, row.stride, pads)
        )
        return {"padding": pads, "out_size": out, "dilation": dil}
    assert row.kernel == () and row.padding == (), (name, op)  # claims no geometry
    return {}


def _torch_size(row, exp) -> tuple[int, ...] | None:
    """The row's output size as PyTorch computes it, running the layer on a zero tensor."""
    ndim = len(row.in_size)
    x = torch.zeros(1, 1, *row.in_size)
    flat = [p for lo_hi in reversed(row.padding) for p in lo_hi]  # F.pad: last axis first
    if "transposed" in row.op:
        w = torch.zeros(1, 1, *row.kernel)
        pad = tuple(lo for lo, _ in row.padding)
        y = _CONV_T[ndim](x, w, stride=row.stride, padding=pad, output_padding=row.output_padding)
        return tuple(n - c for n, c in zip(y.shape[2:], row.crop))
    if row.op.startswith("interp"):
        return None  # F.interpolate is told the skip's size; the closed form checks it
    if "avgpool (ceil)" in row.op or row.op in ("maxpool", "avgpool"):
        pool = _MAX[ndim] if row.op == "maxpool" else _AVG[ndim]
        return tuple(pool(F.pad(x, flat), row.kernel, row.stride).shape[2:])
    if row.op.startswith("conv"):
        w = torch.zeros(1, 1, *row.kernel)
        return tuple(
            _CONV[ndim](F.pad(x, flat), w, stride=row.stride, dilation=exp["dilation"]).shape[2:]
        )
    return None


def _check_sizes_are_stage_sizes(spec, row, skips) -> None:
    """Rows of encoder stage i read and write stage i−1's or stage i's size; rows of decoder
    stage i write stage i's size; a head reads and writes its stage's size."""
    level = _level(row.name)
    if row.name.startswith("heads."):
        assert row.in_size == row.out_size == skips[level], row.name
        return
    if re.search(r"\.(squeeze|excite)$", row.name):  # SEBlock: on the globally pooled 1×1
        assert row.in_size == row.out_size == (1,) * spec.spatial_dims, row.name
        return
    if row.name.startswith("encoder."):
        allowed = {skips[level], skips[max(level - 1, 0)]}
        assert row.in_size in allowed and row.out_size in allowed, (row.name, allowed)
        return
    assert row.out_size == skips[level], row.name
    assert row.in_size in (skips[level], skips[level + 1]), row.name


def _check_plan_independently(spec, data) -> None:
    size = tuple(m + data.draw(st.integers(0, 9)) for m in unet_min_input_size(spec))
    assume(math.prod(size) <= 100_000)
    skips = _stage_sizes(spec, size)
    try:
        plan = plan_unet(spec, size)
    except ShapeError as exc:  # the one documented refusal at a size ≥ the minimum
        assert re.search("(instance|group) norm", str(exc)), exc
        assert min(math.prod(s) for s in skips) == 1, (skips, exc)
        return
    assert plan.output_size == size
    # (a) the rows account for every parameter of the module, built separately
    net = UNet(spec)
    assert sum(r.params for r in plan.rows) == sum(p.numel() for p in net.parameters())
    for row in plan.rows:
        _check_sizes_are_stage_sizes(spec, row, skips)
        exp = _expected(spec, row, skips)
        # (b) padding, output_padding, crop, kernel, stride and sizes: the closed forms
        for key, want in exp.items():
            if key != "dilation":
                assert getattr(row, key) == tuple(want), (row.name, row.op, key)
        # (c) PyTorch itself, on a real tensor of the row's input size
        got = _torch_size(row, exp)
        if got is not None:
            assert got == row.out_size, (row.name, row.op, got, row.out_size)


_HEALTH = [HealthCheck.filter_too_much, HealthCheck.too_slow]


@settings(max_examples=60, deadline=None, suppress_health_check=_HEALTH)
@given(spec=specs(), data=st.data())
def test_plan_rows_match_closed_forms_torch_and_the_parameter_count(spec, data):
    _check_plan_independently(spec, data)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=_HEALTH)
@given(spec=specs(), data=st.data())
def test_plan_rows_match_closed_forms_torch_and_the_parameter_count_long(spec, data):
    _check_plan_independently(spec, data)
