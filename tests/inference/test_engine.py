"""Sliding window vs whole volume; weighting, batching, odd windows."""

from __future__ import annotations

import pytest
import torch

from segkit.errors import ConfigError
from segkit.inference.engine import (
    choose_mode,
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


def test_choose_mode():
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, depth=2, channels=4)
    assert choose_mode(net, (20, 20, 20), (24, 24, 24)) == "whole"
    assert choose_mode(net, (200, 200, 200), (24, 24, 24), memory_budget=1) == "sliding"
    assert choose_mode(net, (200, 200, 200), (24, 24, 24), memory_budget=2**40) == "whole"
    with pytest.raises(ConfigError, match="allowed: auto, whole, sliding"):
        choose_mode(net, (20, 20, 20), (24, 24, 24), mode="tiles")
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window(net, torch.zeros(1, 1, 9, 9, 9), (4, 4, 4), overlap=1.0)
