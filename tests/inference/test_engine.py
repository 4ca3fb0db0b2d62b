"""Sliding window vs whole volume; weighting, batching, odd windows."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from segkit.errors import ConfigError
from segkit.inference.engine.extent import extent_dependence
from segkit.inference.engine.settings import InferenceSettings, decide
from segkit.inference.engine.windows import window_starts
from segkit.nn import UNet
from tests.inference.engine_logits import engine_logits


def sliding_window(net, x, window, *, overlap=0.5, sw_batch_size=None):
    return engine_logits(
        net, x, window, mode="sliding", overlap=overlap, sw_batch_size=sw_batch_size
    )


def whole_volume(net, x):
    with torch.no_grad():
        return net(x)


def predict_logits(net, x, *, window, mode="auto", overlap=0.5, sw_batch_size=None, tta=False):
    return engine_logits(
        net, x, window, mode=mode, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta
    )


def infer(net, x, *, patch_size, settings):
    return engine_logits(net, x, patch_size, settings), None


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


def test_sw_batch_size_does_not_change_the_result():
    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=2, depth=2, channels=4, norm="batch"
    ).eval()
    x = torch.randn(1, 1, 19, 17, 13)
    a = predict_logits(net, x, window=(11, 9, 7), mode="sliding", sw_batch_size=1)
    b = predict_logits(net, x, window=(11, 9, 7), mode="sliding", sw_batch_size=5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("given", "seen"), [(None, 1), (3, 3)])
def test_a_default_window_batch_keeps_its_outputs_under_the_accumulator_cap(
    monkeypatch, given, seen
):
    # 8 classes × 32³ float32 = 1 MiB a window: with the cap at 1 MiB a default batch is one
    # window a call (nnU-Net's); a batch given explicitly is kept. Seen by the network itself.
    from segkit.inference.engine import memory

    monkeypatch.setattr(memory, "ACCUMULATOR_BYTES", 2**20)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=8, depth=2, channels=2).eval()
    batches = []
    net.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    x = torch.randn(1, 1, 96, 32, 32)
    sliding_window(net, x, (32, 32, 32), overlap=0, sw_batch_size=given)
    assert max(batches) == seen and sum(batches) == 3


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_tta_is_the_mean_of_the_eight_mirrored_predictions(mode):
    # Computed here without the engine's mirroring: each of the 2^3 subsets of the spatial
    # axes flips the input, runs the plain prediction and flips the answer back; TTA is
    # their mean. The kernel-3 network is not mirror-symmetric, so every term differs.
    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=2, depth=2, channels=4, norm="batch"
    ).eval()
    x = torch.randn(1, 1, 15, 13, 11)  # 2 windows per axis

    def plain(v: torch.Tensor) -> torch.Tensor:
        if mode == "whole":
            with torch.no_grad():
                return net(v)
        return sliding_window(net, v, (11, 9, 7), overlap=0.5)

    subsets = [dims for r in range(4) for dims in itertools.combinations((2, 3, 4), r)]
    assert len(subsets) == 8
    terms = [plain(x.flip(d)).flip(d) if d else plain(x) for d in subsets]
    expected = torch.stack(terms).mean(0)
    tta = predict_logits(net, x, window=(11, 9, 7), mode=mode, tta=True)
    torch.testing.assert_close(tta, expected, atol=1e-5, rtol=1e-5)
    assert min((t - terms[0]).abs().max().item() for t in terms[1:]) > 1e-3


def _net(norm: str, **kw) -> UNet:
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, depth=2, channels=4, norm=norm, **kw)


def test_auto_never_runs_an_instance_norm_net_whole_on_a_volume_larger_than_the_patch():
    patch = (24, 24, 24)
    for norm, cls in (("instance", "InstanceNorm3d"), ("group", "GroupNorm")):
        net = _net(norm).eval()
        d = decide(net, (40, 24, 24), patch, memory_budget=2**40)
        assert d.mode == "sliding", norm
        assert f"{norm} norm {cls} (encoder.0.blocks.0.convs.0.norm)" in d.reason, d.reason
        assert "larger than the patch" in d.reason
        assert d.window == patch and d.windows == 3  # 40 voxels, window 24, overlap 0.5
    # instance norm with running statistics, in eval mode, is a fixed affine map like batch norm
    running = _net({"name": "instance", "track_running_stats": True}).eval()
    assert decide(running, (40, 24, 24), patch, memory_budget=2**40).mode == "whole"
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
    assert decide(_net("none").eval(), (98, 98, 98), patch, memory_budget=2**40).mode == "whole"


def test_auto_runs_whole_only_on_the_grids_of_the_training_patches():
    # total stride 4 (depth 3): 40 = 24 + 4·4 keeps every level's parity, 41 does not
    net = _bn_net(norm="batch")
    patch = (24, 24, 16)
    assert decide(net, (40, 36, 28), patch, memory_budget=2**40).mode == "whole"
    d = decide(net, (41, 36, 27), patch, memory_budget=2**40)
    assert d.mode == "sliding"
    assert d.reason.startswith("axis 0, 2 of the volume is not the patch size plus a multiple")
    assert "total stride 4×4×4" in d.reason
    # linear interpolation stretches another grid unless the patch is a multiple, too
    interp = _bn_net(norm="batch", upsample="interpolate")
    assert decide(interp, (40, 36, 28), patch, memory_budget=2**40).mode == "whole"
    d = decide(interp, (42, 38, 30), (26, 26, 18), memory_budget=2**40)
    assert d.mode == "sliding" and "linear interpolation" in d.reason
    nearest = _bn_net(norm="batch", upsample="interpolate", interp_mode="nearest")
    assert decide(nearest, (42, 38, 30), (26, 26, 18), memory_budget=2**40).mode == "whole"


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
        InferenceSettings(overlap=1.0)


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


SE = {"_target_": "tests.core.custom_blocks.SEBlock"}
LOCAL = {"_target_": "tests.core.custom_blocks.LocalBlock"}


def _bn_net(**kw) -> UNet:
    """A depth-3 batch-norm U-Net in eval mode, with running statistics away from 0/1 (as
    after training), so whole and sliding see a non-trivial affine map per channel."""
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, depth=3, channels=4, **kw).eval()
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    return net


def _volume() -> torch.Tensor:
    # not stationary (a bright corner), as a scan is not: a mean over a window then differs
    # from the mean over the whole volume
    x = torch.randn(1, 1, 40, 36, 28, generator=torch.Generator().manual_seed(2))
    x[..., :14, :12, :10] += 4.0
    return x


def _whole_minus_sliding(net: nn.Module, x: torch.Tensor) -> float:
    whole = whole_volume(net, x)
    sliding = sliding_window(net, x, (24, 24, 16), overlap=0.5)
    return (whole - sliding).abs().max().item()


def test_a_user_block_that_declares_nothing_runs_sliding_and_needs_to():
    se = _bn_net(norm="batch", encoder_block=SE)
    with torch.no_grad():  # a trained excitation gates strongly; random 1×1 weights barely do
        for name, m in se.named_modules():
            if name.endswith(("squeeze", "excite")):
                m.weight.mul_(10.0)
    d = decide(se, (40, 36, 28), (24, 24, 16), memory_budget=2**40)
    assert d.mode == "sliding"
    assert d.reason.startswith("tests.core.custom_blocks.SEBlock (encoder.0.blocks.0) does not")
    assert "depends_on_extent" in d.reason
    # the same network without the SE blocks may run whole ...
    plain = _bn_net(norm="batch")
    assert decide(plain, (40, 36, 28), (24, 24, 16), memory_budget=2**40).mode == "whole"
    # ... and the numbers say why: with batch norm in eval mode whole and sliding differ only
    # by the windows' borders (measured 3.9e-4, logits' std 0.19); the excitation's mean over
    # the whole volume moves the SE network's answer 27× further (measured 1.05e-2)
    x = _volume()
    bn_gap, se_gap = _whole_minus_sliding(plain, x), _whole_minus_sliding(se, x)
    assert bn_gap < 1e-3, bn_gap
    assert se_gap > 10 * bn_gap, (se_gap, bn_gap)


def test_a_user_block_declared_local_runs_whole_but_its_children_are_still_checked():
    net = _bn_net(norm="batch", encoder_block=LOCAL)
    assert extent_dependence(net) is None
    assert decide(net, (40, 36, 28), (24, 24, 16), memory_budget=2**40).mode == "whole"
    # the declaration covers the block's own forward, not an instance norm inside it
    inorm = _bn_net(norm="instance", encoder_block=LOCAL)
    assert "InstanceNorm3d (encoder.0.blocks.0.conv.norm)" in extent_dependence(inorm)


def test_grn_makes_a_mednext_network_slide():
    kw = dict(block="mednext", upsample="mednext", skip_merge="add", stem="conv1x1")
    kw |= dict(expansion=2, norm="batch")
    with_grn = _bn_net(grn=True, **kw)
    d = decide(with_grn, (40, 36, 28), (24, 24, 16), memory_budget=2**40)
    assert d.mode == "sliding"
    assert d.reason.startswith("GRN (encoder.0.blocks.0.grn) uses statistics of the whole input")
    # GRN is the only reason: the same MedNeXt without it runs whole
    assert (
        decide(_bn_net(grn=False, **kw), (40, 36, 28), (24, 24, 16), memory_budget=2**40).mode
        == "whole"
    )


@pytest.mark.parametrize(
    ("layer", "reason"),
    [
        (nn.AdaptiveAvgPool3d(1), "adaptive pooling AdaptiveAvgPool3d (1)"),
        (nn.AdaptiveMaxPool3d((2, 2, 2)), "adaptive pooling AdaptiveMaxPool3d (1)"),
        (nn.LayerNorm([9, 9, 9]), "layer norm LayerNorm (1)"),
        (nn.GroupNorm(1, 4), "group norm GroupNorm (1)"),
        (nn.InstanceNorm3d(4, affine=True), "instance norm InstanceNorm3d (1)"),
        (nn.BatchNorm3d(4).train(), "batch norm BatchNorm3d (1) in training mode"),
        (nn.BatchNorm3d(4, track_running_stats=False).eval(), "without running statistics"),
        (nn.Upsample(scale_factor=2), "torch.nn.modules.upsampling.Upsample (1) does not declare"),
        (type("MyConv", (nn.Conv3d,), {})(4, 4, 3), "MyConv (1) does not declare"),
    ],
)
def test_torch_layers_that_are_not_audited_local_make_a_network_slide(layer, reason):
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), layer, nn.ReLU())
    for m in (net[0], net[2]):
        m.eval()
    why = extent_dependence(net)
    assert why is not None and reason in why, why


def test_audited_torch_layers_in_eval_mode_are_local():
    net = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.BatchNorm3d(4),
        nn.LeakyReLU(),
        nn.MaxPool3d(2),
        nn.Dropout3d(0.2),
        nn.ConvTranspose3d(4, 2, 2, stride=2),
        nn.ModuleList([nn.GELU(), nn.Identity()]),
    ).eval()
    assert extent_dependence(net) is None


def test_every_module_class_of_segkit_nn_is_audited_or_declares_itself():
    # A new block must be read for locality (and named in the audited set) or declare
    # depends_on_extent; otherwise auto would slide for every network that uses it. And no
    # audited name may be stale (a renamed class would lose its audit silently).
    import importlib
    import inspect
    import pkgutil

    import segkit.nn
    from segkit.inference.engine.extent import AUDITED_SEGKIT_MODULES

    found = {}
    for info in pkgutil.iter_modules(segkit.nn.__path__, "segkit.nn."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, nn.Module) and cls.__module__ == info.name:
                found[cls.__qualname__] = cls
    assert len(found) >= 15
    missing = [
        name
        for name, cls in found.items()
        if name not in AUDITED_SEGKIT_MODULES and getattr(cls, "depends_on_extent", None) is None
    ]
    assert not missing, missing
    assert set(found) >= AUDITED_SEGKIT_MODULES, AUDITED_SEGKIT_MODULES - set(found)
