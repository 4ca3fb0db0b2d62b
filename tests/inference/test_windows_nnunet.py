"""The sliding window's geometry against nnU-Net's own functions, run live (nnunetv2 2.8.1).

segkit places windows and weights them as nnU-Net does, so an nnU-Net model predicted by
segkit sees nnU-Net's windows: the starts must equal ``compute_steps_for_sliding_window``
(``tile_step_size = 1 − overlap``) exactly, and the window weight must be proportional to
``compute_gaussian`` (which scales its peak to ``value_scaling_factor``; a constant factor
cancels in the normaliser). ``compute_gaussian`` runs scipy's ``gaussian_filter`` on a delta in
float64: its values are the normalised kernel (4σ-truncated: never inside a window at σ = w/8),
so segkit's closed form agrees up to its float32 rounding: the product of three factors each
rounded by 2^-24 relative, far below the 1e-6 asserted.
"""

from __future__ import annotations

import pytest
import torch

from segkit.inference.engine.windows import importance_map, window_starts

sliding = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")

SIZES = [1, 2, 5, 16, 17, 31, 33, 64, 65, 97, 110, 127, 128, 129, 200, 333]
WINDOWS = [1, 2, 3, 5, 8, 16, 20, 33, 64, 80, 128]
OVERLAPS = [0.0, 0.25, 0.5, 0.6, 0.75]


@pytest.mark.parametrize("overlap", OVERLAPS)
def test_window_starts_are_nnunets_steps(overlap):
    checked = 0
    for window in WINDOWS:
        for size in SIZES:
            if size < window:  # nnU-Net pads the image to the patch first
                continue
            want = sliding.compute_steps_for_sliding_window((size,), (window,), 1 - overlap)[0]
            assert window_starts(size, window, overlap) == want, (size, window, overlap)
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("window", [(1, 1, 1), (2, 3, 5), (16, 16, 16), (20, 33, 8), (64, 48, 17)])
def test_window_weight_is_proportional_to_nnunets_gaussian(window):
    # a size with several windows per axis: segkit weighs a lone window along an axis by 1
    size = tuple(2 * w + 1 for w in window)
    ours = importance_map(size, window, 0.5).double()
    ref = sliding.compute_gaussian(
        window, sigma_scale=1 / 8, value_scaling_factor=1, dtype=torch.float64, device="cpu"
    )
    ratio = ours / ref
    assert float((ratio / ratio.flatten()[0] - 1).abs().max()) < 1e-6  # ours is float32
    assert int(ours.flatten().argmax()) == int(ref.flatten().argmax())
