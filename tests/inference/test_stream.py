"""Streamed prediction equals the non-streamed path: labels identical, probabilities within
float32 rounding (bitwise for one model without TTA), on odd sizes, 3D and 2D, with TTA,
ensembles and region heads. The reference is the non-streamed engine (``infer``'s whole
logits, then the head) — code the stream does not run."""

from __future__ import annotations

import pytest
import torch

from segkit.inference.engine import InferenceSettings, infer, sliding_window
from segkit.inference.outputs import SOFTMAX, OutputHead
from segkit.inference.stream import (
    ModelRun,
    _sliding_rows,
    probabilities_in_blocks,
    stream_predict,
)
from segkit.nn import UNet
from segkit.spec import UNetSpec


def _net(seed: int, *, out: int = 3, dims: int = 3, norm: str = "instance") -> UNet:
    torch.manual_seed(seed)
    spec = UNetSpec.from_config(
        {
            "spatial_dims": dims,
            "in_channels": 1,
            "out_channels": out,
            "depth": 3,
            "channels": 4,
            "norm": norm,
        }
    )
    net = UNet(spec).eval()
    with torch.no_grad():  # a random-init net's logits are tiny; spread them
        net.heads[0].weight.mul_(20)
    return net


def _reference(runs, x, head, block, slices=32):
    """The non-streamed path: each model's whole logits → probabilities → mean → labels."""
    total = None
    for r in runs:
        logits, _ = infer(
            r.net,
            x,
            patch_size=r.patch_size,
            settings=r.settings,
            slice_axis=r.slice_axis,
            slices_per_batch=slices,
        )
        axis = r.slice_axis if r.is_2d else 0
        p = probabilities_in_blocks(logits[0], head, axis=axis, block=block)
        total = p if total is None else total.add_(p)
    total = total / len(runs)
    return total, head.labels(total, dim=0)


def _streamed(runs, x, head, block, **kw):
    got: dict[int, torch.Tensor] = {}
    axes = set()

    def keep(axis, a, b, probs):
        axes.add(axis)
        got[a] = probs

    res = stream_predict(
        runs, x, head, classes=runs[0].net.spec.out_channels, consumer=keep, block=block, **kw
    )
    (axis,) = axes
    probs = torch.cat([got[a] for a in sorted(got)], dim=axis + 1)
    return probs, res


SIZES = [(37, 29, 23), (23, 41, 17), (45, 13, 21)]


@pytest.mark.parametrize(
    ("size", "tta", "models"),
    [(SIZES[0], False, 1), (SIZES[1], True, 1), (SIZES[2], False, 2), (SIZES[0], True, 2)],
)
def test_streamed_3d_equals_non_streamed(size, tta, models):
    torch.manual_seed(1)
    x = torch.randn(1, 1, *size)
    settings = InferenceSettings(mode="sliding", overlap=0.5, sw_batch_size=3, tta=tta)
    runs = [ModelRun(_net(s), (16, 16, 12), settings) for s in range(models)]
    ref_p, ref_l = _reference(runs, x, SOFTMAX, block=2)
    got_p, res = _streamed(runs, x, SOFTMAX, block=2)
    assert torch.equal(res.labels.long(), ref_l)
    assert res.labels.dtype == torch.uint8
    if not tta:
        assert torch.equal(got_p, ref_p)  # the same logits, blocks and arithmetic: bitwise
    else:
        assert (got_p - ref_p).abs().max() <= 1e-6
    assert res.plan.block_rows == 2 and res.decisions[0].mode == "sliding"


def test_streamed_logits_are_bitwise_the_sliding_windows():
    x = torch.randn(1, 1, 41, 19, 27)
    net = _net(3)
    window, overlap = (16, 12, 12), 0.6
    ref = sliding_window(net, x, window, overlap=overlap, sw_batch_size=5)[0]
    from segkit.inference.engine import Decision

    d = Decision("sliding", (41, 19, 27), window, overlap, 0, "")
    for h in (1, 3, 7, 41):
        blocks = list(
            _sliding_rows(net, x, d, batch=5, tta=False, h=h, dtype=torch.float32, progress=False)
        )
        assert all(b.shape[1] == h for b in blocks[:-1])
        assert torch.equal(torch.cat(blocks, dim=1), ref)


@pytest.mark.parametrize(
    ("slice_axis", "tta", "mode"),
    [(0, False, "sliding"), (2, True, "sliding"), (1, False, "whole")],
)
def test_streamed_2d_net_on_a_volume_equals_non_streamed(slice_axis, tta, mode):
    x = torch.randn(1, 1, 19, 33, 27)
    settings = InferenceSettings(mode=mode, overlap=0.5, sw_batch_size=2, tta=tta)
    patch = [16, 16, 16]
    seeds = (0,) if tta else (0, 1)  # TTA of an ensemble: covered in 3D
    runs = [ModelRun(_net(s, dims=2), tuple(patch), settings, slice_axis=slice_axis) for s in seeds]
    ref_p, ref_l = _reference(runs, x, SOFTMAX, block=3, slices=5)
    got_p, res = _streamed(runs, x, SOFTMAX, block=3, slices_per_batch=5)
    assert res.plan.axis == slice_axis
    assert torch.equal(res.labels.long(), ref_l)
    assert torch.equal(got_p, ref_p)  # per slice the same calls as the non-streamed path


@pytest.mark.parametrize("tta", [False, True])
def test_streamed_region_head_equals_non_streamed(tta):
    head = OutputHead.regions([1, 2, 3])
    x = torch.randn(1, 1, 31, 22, 19)
    settings = InferenceSettings(mode="sliding", overlap=0.5, sw_batch_size=2, tta=tta)
    runs = [ModelRun(_net(s, out=3), (16, 16, 12), settings) for s in (4, 5)]
    ref_p, ref_l = _reference(runs, x, head, block=4)
    got_p, res = _streamed(runs, x, head, block=4)
    assert torch.equal(res.labels.long(), ref_l)
    assert set(ref_l.unique().tolist()) > {0}  # the regions do write labels
    assert (got_p - ref_p).abs().max() <= 1e-6


def test_whole_mode_streams_its_blocks():
    x = torch.randn(1, 1, 24, 20, 16)  # the patch plus multiples of the stride 4
    settings = InferenceSettings(mode="auto")
    runs = [ModelRun(_net(0, norm="batch"), (16, 16, 12), settings)]
    ref_p, ref_l = _reference(runs, x, SOFTMAX, block=5)
    got_p, res = _streamed(runs, x, SOFTMAX, block=5)
    assert res.decisions[0].mode == "whole"
    assert torch.equal(res.labels.long(), ref_l) and torch.equal(got_p, ref_p)


def test_float16_accumulation_stays_within_its_measured_bound():
    x = torch.randn(1, 1, 37, 29, 23)
    settings = InferenceSettings(mode="sliding", overlap=0.5, sw_batch_size=3)
    runs = [ModelRun(_net(0, out=5), (16, 16, 12), settings)]
    logits, _ = infer(runs[0].net, x, patch_size=(16, 16, 12), settings=settings)
    ref_p, ref_l = _reference(runs, x, SOFTMAX, block=2)
    got_p, res = _streamed(runs, x, SOFTMAX, block=2, accumulate="float16")
    assert res.plan.accumulate == "float16"
    diff = (got_p - ref_p).abs().max().item()
    # the average logit held in float16 (11-bit significand): a few roundings of the largest
    # logit, and the softmax moves at most half as much; measured 5.8e-3 at |logit| <= 47
    bound = 0.5 * 2**-11 * logits.abs().max().item()
    assert 0 < diff <= bound
    assert (res.labels.long() == ref_l).float().mean() >= 0.999
