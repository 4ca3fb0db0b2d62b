"""Sliding window vs whole volume; weighting, batching, odd windows."""

from __future__ import annotations

import pytest
import torch

from segkit.errors import ConfigError
from segkit.inference.engine import (
    InferenceSettings,
    decide,
    extent_dependence,
    infer,
    predict_logits,
    sliding_window,
    whole_volume,
    window_starts,
)
from segkit.nn import UNet


def test_window_starts_cover_exactly():
    assert window_starts(97, 33, 0.5) == [0, 16, 32, 48, 64]
    assert window_starts(10, 33, 0.5) == [0]
    for size, win in [(37, 8), (101, 31), (9, 2)]:
        starts = window_starts(size, win, 0.3)
        assert starts[0] == 0 and starts[-1] + win == size
        assert all(b - a <= win for a, b in zip(starts, starts[1:]))


def test_pointwise_model_sliding_equals_whole():
    # A 1×1×1 network has no context, so any tiling must reproduce the whole volume exactly:
    # this checks the Gaussian weighting and normalisation, batching and odd windows.
    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=2, out_channels=3, depth=1, kernel_size=1, norm="none"
    ).eval()
    x = torch.randn(2, 2, 23, 18, 11)
    whole = whole_volume(net, x)
    for window, bs in [((7, 9, 5), 1), ((8, 5, 11), 3), ((30, 30, 30), 4)]:
        sw = sliding_window(net, x, window, overlap=0.4, sw_batch_size=bs)
        assert sw.shape == whole.shape
        torch.testing.assert_close(sw, whole, atol=1e-5, rtol=1e-5)
    uniform = sliding_window(net, x, (7, 9, 5), overlap=0.5, gaussian=False)
    torch.testing.assert_close(uniform, whole, atol=1e-5, rtol=1e-5)


def test_unet_sliding_agrees_with_whole_on_interior():
    # Batch norm in eval mode: every window sees the same statistics; windows differ from the
    # whole volume only through zero padding at their borders, which the Gaussian down-weights.
    # Tolerance: argmax agrees on >= 97 % of interior voxels, mean |logit diff| < 10 % of
    # the logits' std.
    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=3, depth=3, channels=4, norm="batch"
    ).eval()
    x = torch.randn(1, 1, 41, 37, 23)
    whole = predict_logits(net, x, window=(24, 24, 16), mode="whole")
    sw = predict_logits(net, x, window=(24, 24, 16), mode="sliding", overlap=0.5)
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(3, -3))
    w, s = whole[interior], sw[interior]
    agree = (w.argmax(1) == s.argmax(1)).float().mean().item()
    assert agree >= 0.97, agree
    assert (w - s).abs().mean().item() < 0.1 * w.std().item()


def test_tta_and_sw_batch_size_do_not_change_shape_or_result():
    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=2, depth=2, channels=4, norm="batch"
    ).eval()
    x = torch.randn(1, 1, 19, 17, 13)
    a = predict_logits(net, x, window=(11, 9, 7), mode="sliding", sw_batch_size=1)
    b = predict_logits(net, x, window=(11, 9, 7), mode="sliding", sw_batch_size=5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    t = predict_logits(net, x, window=(11, 9, 7), mode="whole", tta=True)
    assert t.shape == (1, 2, 19, 17, 13)


def _net(norm: str, **kw) -> UNet:
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, depth=2, channels=4, norm=norm, **kw)


def test_auto_never_runs_an_instance_norm_net_whole_on_a_volume_larger_than_the_patch():
    patch = (24, 24, 24)
    for norm in ("instance", "group"):
        net = _net(norm).eval()
        d = decide(net, (40, 24, 24), patch, memory_budget=2**40)
        assert d.mode == "sliding", norm
        assert f"{norm} norm" in d.reason and "larger than the patch" in d.reason
        assert d.window == patch and d.windows == 3  # 40 voxels, window 24, overlap 0.5
    # no larger than the patch on every axis: one window is the whole volume
    d = decide(_net("instance").eval(), (20, 24, 11), patch)
    assert (d.mode, d.windows, d.window) == ("whole", 1, (20, 24, 11))
    assert d.reason == "the volume fits in one training patch"


def test_auto_may_run_a_batch_norm_net_whole_only_in_eval_mode():
    patch = (24, 24, 24)
    net = _net("batch")
    assert extent_dependence(net.eval()) is None
    assert decide(net, (200, 200, 200), patch, memory_budget=2**40).mode == "whole"
    assert decide(net, (200, 200, 200), patch, memory_budget=1).mode == "sliding"
    assert extent_dependence(net.train()) is not None  # batch statistics of the input
    assert decide(net, (200, 200, 200), patch, memory_budget=2**40).mode == "sliding"
    assert decide(_net("none").eval(), (99, 99, 99), patch, memory_budget=2**40).mode == "whole"


def test_explicit_mode_and_window_scale_win():
    net = _net("instance").eval()
    whole = decide(net, (40, 30, 30), (24, 24, 24), InferenceSettings(mode="whole"))
    assert (whole.mode, whole.reason) == ("whole", "mode=whole")
    wide = decide(net, (40, 30, 30), (16, 16, 16), InferenceSettings(window_scale=1.5))
    assert wide.window == (24, 24, 24) and wide.mode == "sliding"
    clipped = decide(net, (40, 20, 30), (16, 16, 16), InferenceSettings(window_scale=2.0))
    assert clipped.window == (32, 20, 30)
    with pytest.raises(ConfigError, match="allowed: auto, whole, sliding"):
        InferenceSettings(mode="tiles")
    with pytest.raises(ConfigError, match="window_scale"):
        InferenceSettings(window_scale=0.5)
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window(net, torch.zeros(1, 1, 9, 9, 9), (4, 4, 4), overlap=1.0)


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_tta_of_a_pointwise_network_equals_no_tta(mode):
    # A 1×1×1 network commutes with every mirroring, so mirroring TTA must return exactly
    # the plain prediction: this checks that each flip is undone on the right axes.
    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=2, out_channels=3, depth=1, kernel_size=1, norm="none"
    ).eval()
    x = torch.randn(1, 2, 13, 10, 7)
    plain, _ = infer(net, x, patch_size=(6, 5, 4), settings=InferenceSettings(mode=mode))
    tta, _ = infer(net, x, patch_size=(6, 5, 4), settings=InferenceSettings(mode=mode, tta=True))
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=1e-5)
    # a network that is not mirror-symmetric gives another answer with TTA (the test can fail)
    conv = UNet(spatial_dims=3, in_channels=2, out_channels=3, depth=1, kernel_size=3).eval()
    a, _ = infer(conv, x, patch_size=(6, 5, 4), settings=InferenceSettings(mode=mode))
    b, _ = infer(conv, x, patch_size=(6, 5, 4), settings=InferenceSettings(mode=mode, tta=True))
    assert (a - b).abs().max() > 1e-3
