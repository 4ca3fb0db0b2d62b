"""The one engine against independent references: MONAI's ``sliding_window_inference`` given
segkit's importance map, and a plain loop written here (every window, its weight, the sum and
the division, on odd sizes), for 3D and 2D networks, every tile layout, mirroring, ensembles
and region heads.

Tolerance. A voxel's value is a weighted mean of at most 2^3 windows' logits: float32
products and sums of at most 8 terms, then one division by a float64-accumulated normaliser
rounded to float32. Each step rounds by at most 2^-24 relative, so the two computations,
summing in other orders, differ by at most about (2·8 + 2)·2^-24 ≈ 1.1e-6 of the largest
|logit|; the network's own forward may also differ in the last bits with the batch it runs in
(oneDNN picks kernels by shape), another ~1e-6 relative. ``ATOL_REL = 8e-6`` of max |logit|
covers both with margin; a wrong weight, window or tile is off by 1e-2 or more.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from segkit.inference.engine.outputs import SOFTMAX, OutputHead
from segkit.inference.engine.segment import segment
from segkit.inference.engine.settings import InferenceSettings
from segkit.inference.engine.sliding import Layout, ModelRun, model_tiles
from segkit.inference.engine.windows import importance_map, window_grid
from segkit.nn import UNet
from tests.inference.engine_logits import engine_logits

ATOL_REL = 8e-6


def _net(seed: int, *, out: int = 3, dims: int = 3, norm: str = "instance") -> UNet:
    torch.manual_seed(seed)
    return UNet(
        spatial_dims=dims, in_channels=1, out_channels=out, depth=3, channels=4, norm=norm
    ).eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    tol = ATOL_REL * b.abs().max().item()
    assert (a - b).abs().max().item() <= tol, ((a - b).abs().max().item(), tol)


@torch.no_grad()
def reference_logits(net, x, window, overlap, flips=()):
    """Plain loop: every window (the engine's importance map), weighted sum over windows,
    divided by the summed weights; ``flips``: each window also run mirrored, averaged. Along
    an axis shorter than ``window`` the one window spans it and the network's input is that
    window zero-padded, centred, to ``window`` (as training patches are), the output cropped."""
    size = x.shape[2:]
    full = tuple(window)
    window = tuple(min(w, s) for w, s in zip(window, size))
    pad = []  # F.pad order: last axis first, (before, after)
    for f, w in reversed(list(zip(full, window))):
        pad += [(f - w) // 2, f - w - (f - w) // 2]
    keep = tuple(slice((f - w) // 2, (f - w) // 2 + w) for f, w in zip(full, window))
    weight = importance_map(size, window, overlap)
    acc = torch.zeros((net.spec.out_channels, *size), dtype=torch.float64)
    norm = torch.zeros(size, dtype=torch.float64)
    for corner in window_grid(size, window, overlap):
        sl = tuple(slice(c, c + w) for c, w in zip(corner, window))
        patch = torch.nn.functional.pad(x[(slice(None), slice(None), *sl)], pad)
        outs = [net(patch)] + [net(patch.flip(d)).flip(d) for d in flips]
        out = torch.stack(outs).mean(0)[0][(slice(None), *keep)]
        acc[(slice(None), *sl)] += out.double() * weight.double()
        norm[sl] += weight.double()
    return (acc / norm).float()


@pytest.mark.parametrize("size", [(32, 32, 24), (48, 48, 16)])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_engine_equals_monai_sliding_window_inference(size, overlap):
    monai_utils = pytest.importorskip("monai.inferers.utils")
    net, window = _net(0), (16, 16, 8)
    step = [int(w * (1 - overlap)) for w in window]
    # sizes where MONAI and segkit place the same windows: size − window a multiple of the step
    assert all((s - w) % st == 0 for s, w, st in zip(size, window, step))
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(1))
    ours = engine_logits(net, x, window, mode="sliding", overlap=overlap, sw_batch_size=4)
    with torch.no_grad():
        theirs = monai_utils.sliding_window_inference(
            x,
            window,
            4,
            net,
            overlap=overlap,
            roi_weight_map=importance_map(size, window, overlap),
        )
    _close(ours, theirs)


@pytest.mark.parametrize("size", [(32, 32, 5), (3, 48, 16)])
def test_a_volume_shorter_than_the_window_is_padded_as_monai_pads_it(size):
    # MONAI pads the volume with zeros (centred) to the window along a shorter axis, runs its
    # windows, crops the output: the network sees a window as the training patches it saw
    monai_utils = pytest.importorskip("monai.inferers.utils")
    net, window = _net(0), (16, 16, 8)
    padded = tuple(max(s, w) for s, w in zip(size, window))
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(1))
    ours = engine_logits(net, x, window, mode="sliding", overlap=0.5, sw_batch_size=4)
    with torch.no_grad():
        theirs = monai_utils.sliding_window_inference(
            x, window, 4, net, overlap=0.5, roi_weight_map=importance_map(padded, window, 0.5)
        )
        unpadded = reference_logits(net, x, tuple(min(w, s) for w, s in zip(window, size)), 0.5)
    _close(ours, theirs)
    assert (ours - unpadded).abs().max() > 1e-2  # instance norm: the padding matters


@pytest.mark.parametrize("size", [(37, 29, 15), (23, 41, 19)])
def test_engine_equals_a_plain_loop_on_odd_sizes_in_every_layout(size):
    net, window, overlap = _net(1), (16, 12, 8), 0.5
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(2))
    expected = reference_logits(net, x, window, overlap)
    _close(engine_logits(net, x, window, mode="sliding", overlap=overlap), expected)
    run = ModelRun(net, window, InferenceSettings(mode="sliding", overlap=overlap))
    decision = run.decide(size, memory_budget=None, device="cpu")
    layouts = [
        Layout(size, 1, ((0, size[1]), (0, size[2]))),
        Layout(size, 5, ((0, 10, 21, size[1]), (0, 7, size[2]))),  # cuts through windows
        Layout(size, 16, ((0, 1, size[1]), (0, size[2] - 1, size[2]))),
    ]
    for layout in layouts:
        got = torch.full_like(expected, float("nan"))
        seen = torch.zeros(size, dtype=torch.int32)
        for tile in model_tiles(run, x, decision, layout, batch=3):
            got[(slice(None), *tile.box)] = tile.logits
            seen[tile.box] += 1
        assert (seen == 1).all(), layout  # every voxel in exactly one tile
        _close(got, expected)


def test_mirroring_averages_each_window_over_its_flips():
    # nnU-Net's test-time mirroring: each window also runs flipped along every subset of the
    # spatial axes; the plain loop computes it window by window
    net, window, size = _net(2), (16, 12, 8), (29, 21, 13)
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(3))
    flips = [d for r in (1, 2, 3) for d in itertools.combinations((2, 3, 4), r)]
    expected = reference_logits(net, x, window, 0.5, flips)
    got = engine_logits(net, x, window, mode="sliding", overlap=0.5, tta=True)
    _close(got, expected)
    assert (got - reference_logits(net, x, window, 0.5)).abs().max() > 1e-3  # it mirrored


@pytest.mark.parametrize("slice_axis", [0, 2])
def test_a_2d_network_on_a_volume_is_its_plain_loop_on_every_slice(slice_axis):
    net, size = _net(3, dims=2), (21, 26, 9)
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(4))
    patch = [12, 10, 11]
    del patch[slice_axis]
    got = engine_logits(net, x, patch, mode="sliding", overlap=0.5, slice_axis=slice_axis, tta=True)
    slices = []
    for i in range(size[slice_axis]):
        plane = x.select(2 + slice_axis, i)
        slices.append(reference_logits(net, plane, patch, 0.5, flips=[(2,), (3,), (2, 3)]))
    _close(got[0], torch.stack(slices, dim=1 + slice_axis))


@pytest.mark.parametrize("head", [SOFTMAX, OutputHead.regions([1, 2, 3])])
def test_an_ensemble_averages_probabilities_tile_by_tile(head):
    size = (27, 22, 17)
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(5))
    nets = [_net(10, out=3), _net(11, out=3)]
    windows = [(16, 12, 8), (12, 16, 12)]
    runs = [
        ModelRun(n, w, InferenceSettings(mode="sliding", overlap=o))
        for n, w, o in zip(nets, windows, (0.5, 0.25))
    ]
    probs_seen = torch.full((3, *size), float("nan"))

    def keep(box, probs):
        probs_seen[(slice(None), *box)] = probs

    result = segment(runs, x, head, classes=3, probabilities=keep)
    refs = [
        head.probabilities(reference_logits(n, x, w, o), dim=0)
        for n, w, o in zip(nets, windows, (0.5, 0.25))
    ]
    expected = (refs[0] + refs[1]) / 2
    assert (probs_seen - expected).abs().max().item() <= 1e-5  # probabilities: scale 1
    labels = head.labels(expected, dim=0)
    # labels agree wherever the decision is not within the tolerance of a tie
    if head.is_regions:
        decided = ((expected - 0.5).abs() > 1e-5).all(0)
    else:
        top2 = expected.topk(2, dim=0).values
        decided = (top2[0] - top2[1]) > 1e-5
    assert decided.float().mean() > 0.99
    assert torch.equal(result.labels.long()[decided], labels[decided])


def test_whole_mode_is_the_network_on_the_whole_volume():
    net, size = _net(4, norm="batch"), (21, 18, 13)
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(6))
    got = engine_logits(net, x, (8, 8, 8), mode="whole")
    with torch.no_grad():
        expected = net(x)
    assert torch.equal(got, expected)  # one window, weight 1, normaliser 1: bitwise
