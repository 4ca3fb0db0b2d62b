"""Blocks: presets against their references' numbers, user blocks and their contract,
the ResNet-D shortcut on odd sizes, and plans (params, FLOPs, memory) for every block."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from segkit import ConfigError, ShapeError
from segkit.config import compose, model_config
from segkit.nn import UNet, plan_unet
from segkit.nn.blocks import GRN, BlockContext, MedNeXtBlock, ResidualBlock, Shortcut
from segkit.spec import UNetSpec
from tests.utils import autograd_saved_bytes

SE = "tests.core.custom_blocks.SEBlock"


def _preset(name: str, *overrides: str) -> UNetSpec:
    cfg = compose([f"model={name}", *overrides])
    return UNetSpec.from_config(model_config(cfg, num_channels=1, num_classes=3))


# The presets against the references built live (DNA's PlainConvUNet and ResidualEncoderUNet,
# MONAI's MedNeXt and DynUNet), parameters and forward values: tests/references/.

CTX = BlockContext(spatial_dims=3, stage="test", kernel_size=(3, 3, 3), dilation=(1, 1, 1))


def test_residual_blocks_add_their_input():
    # closed form: with the main path's output at 0 (the last norm's scale and shift; MedNeXt:
    # the compression conv) the block is act(x), MedNeXt's x: the identity add alone, exactly
    x = torch.randn(2, 4, 5, 6, 7)
    res = ResidualBlock(4, 4, (1, 1, 1), CTX)
    mednext = MedNeXtBlock(4, 4, (1, 1, 1), replace(CTX, grn=True, act=("gelu", ())))
    with torch.no_grad():
        for p in (*res.convs[-1].norm.parameters(), *mednext.compress.conv.parameters()):
            p.zero_()
        assert torch.equal(res(x), F.leaky_relu(x, 0.01))
        assert torch.equal(mednext(x), x)


def test_grn_is_convnext_v2s_formula():
    grn = GRN(3, spatial_dims=3)
    x = torch.randn(2, 3, 4, 5, 6)
    with torch.no_grad():
        assert torch.equal(grn(x), x)  # gamma = beta = 0: the identity (segkit.nn.weights)
        grn.gamma.normal_()
        grn.beta.normal_()
        gx = x.pow(2).sum(dim=(2, 3, 4), keepdim=True).sqrt()  # L2 norm over space, per channel
        want = grn.gamma * (x * gx / (gx.mean(dim=1, keepdim=True) + 1e-6)) + grn.beta + x
        # sums of 120 squares in another order: |Δ| ≲ sqrt(120)·eps32 ≈ 1.3e-6 relative
        assert torch.allclose(grn(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "size"),
    [("resenc", (65, 67, 63)), ("mednext_b", (37, 45, 29)), ("mednext_s", (33, 35, 31))],
)
def test_presets_plan_at_sizes_that_crash_the_references(name, size):
    spec = _preset(name)
    plan = plan_unet(spec, size)
    assert plan.output_size == size
    with torch.device("meta"):
        assert plan.params == sum(p.numel() for p in UNet(spec).parameters())


def test_kernel_5_mednext_is_exact_too():
    spec = _preset("mednext_s", "model.kernel_size=5", "model.channels=4", "model.max_channels=8")
    net = UNet(spec).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 23, 19, 21)).shape == (1, 3, 23, 19, 21)
    ups = [r for r in plan_unet(spec, (23, 19, 21)).rows if r.name.endswith(".up.dw")]
    assert ups and all(r.kernel == (5, 5, 5) and not any(r.crop) for r in ups)


@pytest.mark.parametrize("size", [(7, 9, 10), (8, 8, 8), (5, 6, 7)])
def test_resnet_d_shortcut_lands_on_the_main_path_for_every_size(size):
    ctx = BlockContext(
        spatial_dims=3, stage="test", kernel_size=(3, 3, 3), dilation=(1, 1, 1), shortcut="avgpool"
    )
    sc = Shortcut(ctx, 2, 4, (2, 2, 2))
    x = torch.randn(1, 2, *size)
    want = tuple(-(-n // 2) for n in size)
    assert sc(x).shape[2:] == want
    plan_pad = sc.plan_op(size, want)["padding"]
    assert plan_pad == tuple((0, 2 * w - n) for n, w in zip(size, want))
    # the pooled value of a partial window is the mean of the voxels inside the input
    tail = tuple(slice(-(n % 2 or 2), None) for n in size)
    assert torch.allclose(sc.pool(x)[..., -1, -1, -1], x[(..., *tail)].mean(dim=(-3, -2, -1)))


def test_resenc_plan_shows_the_shortcut_padding_at_odd_sizes():
    plan = plan_unet(_preset("resenc"), (65, 67, 63))
    row = plan.row("encoder.1.blocks.0.shortcut")
    assert row.op.startswith("avgpool (ceil)")
    assert row.padding == ((0, 1), (0, 1), (0, 1)) and row.out_size == (33, 34, 32)


def test_user_block_plugs_into_encoder_and_decoder_2d_and_3d():
    for ndim, size in ((2, (29, 31)), (3, (13, 11, 15))):
        block = {"_target_": SE, "reduction": 2}
        net = UNet(
            spatial_dims=ndim,
            depth=3,
            channels=4,
            encoder_block=block,
            decoder_block=block,
            blocks_per_stage=2,
        )
        plan = net.plan(size)
        assert plan.params == sum(p.numel() for p in net.parameters())
        assert net(torch.randn(2, 1, *size)).shape == (2, 2, *size)
        names = {r.name for r in plan.rows}
        # the block's leaves and its own ops (sigmoid, product) are rows of the plan
        assert {"encoder.1.blocks.0.squeeze", "encoder.1.blocks.0"} <= names
        own = plan.row("encoder.1.blocks.0")
        assert own.saved > 0 and own.params == 0


def test_user_block_round_trips_through_the_spec():
    spec = UNetSpec.from_config(depth=2, encoder_block={"_target_": SE, "reduction": 3})
    assert spec.encoder_block == (SE, (("reduction", 3),))
    assert UNetSpec.from_config(spec.to_dict()) == spec
    assert spec.block == "SEBlock/plain"


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("tests.core.custom_blocks.FloorBlock", r"encoder stage 1, block 0 .*FloorBlock.*stride 2"),
        (
            "tests.core.custom_blocks.WrongWidthBlock",
            r"encoder stage 0, block 0 .*gave 2×2×2 × 2 ch; the plan needs 2×2×2 × 4 ch",
        ),
    ],
)
def test_block_breaking_the_contract_is_a_shape_error_naming_block_and_stage(target, match):
    with pytest.raises(ShapeError, match=match):
        UNet(depth=3, channels=4, encoder_block={"_target_": target})


def test_contract_check_runs_at_plan_time_not_at_the_first_batch():
    spec = UNetSpec.from_config(
        depth=2, channels=4, decoder_block={"_target_": "tests.core.custom_blocks.FloorBlock"}
    )
    # stride 1 in the decoder: a valid conv of kernel 1 keeps the size, so it passes
    plan_unet(spec, (9, 9, 9))
    bad = UNetSpec.from_config(
        depth=2, channels=4, encoder_block={"_target_": "tests.core.custom_blocks.FloorBlock"}
    )
    with pytest.raises(ShapeError, match="encoder stage 1"):
        plan_unet(bad, (9, 9, 9))


@pytest.mark.parametrize(
    ("block", "match"),
    [
        ({"_target_": "tests.core.custom_blocks.NoContextBlock"}, r"model.encoder_block \(enc"),
        ({"_target_": "tests.core.custom_blocks.not_a_class"}, "not an nn.Module subclass"),
        ({"_target_": "tests.core.custom_blocks.Missing"}, "cannot import"),
        ({"_target_": "nodots"}, "not a dotted path"),
        ({"_target_": SE, "opts": {"a": 1}}, "nested mappings"),
    ],
)
def test_bad_user_block_is_a_config_error_naming_the_key(block, match):
    with pytest.raises(ConfigError, match=match):
        UNet(depth=2, channels=4, encoder_block=block)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(
            encoder_block="residual",
            decoder_block="plain",
            blocks_per_stage=[1, 2, 2],
            stem="conv",
            shortcut="avgpool",
            convs_per_stage_decoder=1,
        ),
        dict(block="bottleneck", blocks_per_stage=2, dropout=0.2),
        dict(
            block="mednext",
            upsample="mednext",
            skip_merge="add",
            stem="conv1x1",
            expansion=[2, 3, 4],
            grn=True,
            act="gelu",
        ),
        dict(
            encoder_block={"_target_": SE},
            decoder_block="residual",
            norm="group",
            downsample="maxpool",
        ),
    ],
)
def test_activation_memory_is_autograds_saved_tensors(cfg):
    spec = UNetSpec.from_config(dict(cfg, depth=3, channels=4, in_channels=1, out_channels=2))
    net = UNet(spec)
    size = (17, 20, 15)
    measured = autograd_saved_bytes(net, torch.randn(1, 1, *size))
    plan = plan_unet(spec, size)
    assert abs(plan.activation_bytes - measured) / measured < 0.01, (
        plan.activation_bytes,
        measured,
    )
    assert plan.activation_bytes == sum(r.saved for r in plan.rows)


def test_flops_count_every_conv_including_depthwise_and_transposed():
    spec = UNetSpec.from_config(
        depth=2,
        channels=4,
        block="mednext",
        upsample="mednext",
        skip_merge="add",
        expansion=2,
        in_channels=1,
        out_channels=2,
    )
    size = (9, 10, 11)
    plan = plan_unet(spec, size)
    n = 9 * 10 * 11
    dw = plan.row("encoder.0.blocks.0.dw")  # depthwise 3×3×3 on 1 channel (in → in)
    assert dw.macs == n * 1 * 27
    up = plan.row("decoder.0.up.dw")  # transposed depthwise: input voxels × 8 channels × k³
    assert up.macs == 5 * 5 * 6 * 8 * 27
    assert plan.macs == sum(r.macs for r in plan.rows)


def test_checkpoints_of_the_previous_layout_still_load():
    # before blocks per stage, a stage held one block: encoder.0.block.convs.0..., and a
    # residual shortcut was a Sequential (shortcut.0 conv, shortcut.1 norm)
    net = UNet(depth=3, channels=4, block="residual", conv_bias=False)
    legacy = {
        k.replace(".blocks.0.", ".block.")
        .replace(".shortcut.conv.", ".shortcut.0.")
        .replace(".shortcut.norm.", ".shortcut.1."): v
        for k, v in net.state_dict().items()
    }
    assert "encoder.1.block.shortcut.0.weight" in legacy
    fresh = UNet(depth=3, channels=4, block="residual", conv_bias=False)
    fresh.load_state_dict(legacy, strict=True)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in net.state_dict().items())
