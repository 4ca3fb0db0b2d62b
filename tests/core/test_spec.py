"""Spec normalisation: broadcasting, and a ConfigError naming the key for bad YAML."""

import re

import pytest

from segkit import ConfigError
from segkit.spec import UNetSpec


def test_scalars_broadcast_per_stage_and_axis():
    s = UNetSpec.from_config(depth=4, channels=32, max_channels=100, kernel_size=3, strides=2)
    assert s.channels == (32, 64, 100, 100)
    assert s.kernel_size == ((3, 3, 3),) * 4
    assert s.strides == ((1, 1, 1),) + ((2, 2, 2),) * 3
    assert s.up_kernel_size == ((2, 2, 2),) * 3
    assert s.convs_per_stage_decoder == (2, 2, 2)


def test_mixed_per_stage_per_axis_lists():
    s = UNetSpec.from_config(
        depth=4, kernel_size=[[1, 3, 3], [3, 3, 3], 3, 5], strides=[1, [1, 2, 2], 2, [2, 2, 1]]
    )
    assert s.kernel_size == ((1, 3, 3), (3, 3, 3), (3, 3, 3), (5, 5, 5))
    assert s.strides[1] == (1, 2, 2) and s.strides[3] == (2, 2, 1)


def test_round_trip_through_dict():
    s = UNetSpec.from_config(depth=3, norm={"name": "group", "num_groups": 4}, act="gelu")
    assert UNetSpec.from_config(s.to_dict()) == s
    s = UNetSpec.from_config(
        depth=3,
        encoder_block="residual",
        decoder_block="mednext",
        blocks_per_stage=[1, 2, 3],
        expansion=[2, 3, 4],
        stem="conv",
        shortcut="avgpool",
        skip_merge="add",
        grn=True,
        upsample="mednext",
    )
    assert UNetSpec.from_config(s.to_dict()) == s


def test_todays_keys_keep_their_meaning():
    # block: shorthand for both; convs_per_stage: convs of the (single) block of a stage
    s = UNetSpec.from_config(depth=3, block="residual", convs_per_stage=3)
    assert s.encoder_block == s.decoder_block == ("residual", ())
    assert s.blocks_per_stage == (1, 1, 1) and s.convs_per_stage == (3, 3, 3)
    assert s.block == "residual"
    s = UNetSpec.from_config(depth=3, block="residual", decoder_block="plain")
    assert s.block == "residual/plain"


def test_expansion_defaults_follow_the_blocks():
    mednext = UNetSpec.from_config(depth=3, block="mednext", expansion=[2, 3, 4])
    assert mednext.expansion_decoder == (2, 3)  # the decoder reads the encoder's, per level
    bottleneck = UNetSpec.from_config(depth=3, block="bottleneck")
    assert bottleneck.expansion == (4, 4, 4)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"depth": 0}, "model.depth"),
        ({"depth": "four"}, "model.depth"),
        ({"channels": -4}, "model.channels"),
        ({"depth": 4, "kernel_size": [3, 3, 3]}, "model.kernel_size"),
        ({"depth": 3, "kernel_size": [3, [3, 3], 3]}, "model.kernel_size[1]"),
        ({"depth": 3, "strides": [2, 2, 2]}, "model.strides[0]"),
        ({"depth": 3, "strides": [1, 0, 2]}, "model.strides[1]"),
        ({"norm": "layer"}, "model.norm"),
        ({"act": "swish"}, "model.act"),
        ({"block": "dense"}, "model.block"),
        ({"downsample": "stride"}, "model.downsample"),
        ({"kernel_size": "3"}, "model.kernel_size"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"spatial_dims": 4}, "model.spatial_dims"),
        ({"deepsupervision": True}, "unknown key"),
        ({"depth": 3, "up_kernel_size": [2, 2, 2]}, "model.up_kernel_size"),
        ({"depth": 3, "blocks_per_stage": [1, 0, 1]}, "model.blocks_per_stage[1] (stage 1)"),
        ({"depth": 3, "blocks_per_stage_decoder": [1, 2, 1]}, "model.blocks_per_stage_decoder"),
        ({"depth": 3, "expansion_decoder": [2, 2, 2]}, "model.expansion_decoder"),
        ({"depth": 3, "expansion": [2, "x", 2]}, "model.expansion[1] (stage 1)"),
        ({"skip_merge": "mul"}, "model.skip_merge"),
        ({"stem": "big"}, "model.stem"),
        ({"stem_channels": 8}, "model.stem_channels"),
        ({"shortcut": "maxpool"}, "model.shortcut"),
        ({"encoder_block": "dense"}, "model.encoder_block"),
        ({"decoder_block": {"name": "residual", "convs": 3}}, "model.decoder_block"),
        ({"upsample": "pixelshuffle"}, "model.upsample"),
        ({"grn": "yes"}, "model.grn"),
    ],
)
def test_bad_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        UNetSpec.from_config(cfg)


def test_flat_list_error_shows_per_axis_syntax():
    with pytest.raises(ConfigError, match=r"kernel_size: \[\[1, 3, 3\], \[1, 3, 3\]"):
        UNetSpec.from_config(depth=5, kernel_size=[1, 3, 3])


# What each built-in name means, written from the papers' and PyTorch's own names (not read
# from segkit.registry): the spec accepts exactly these, and the network builds these classes.
BLOCK_CLASSES = {
    "plain": "PlainBlock",
    "residual": "ResidualBlock",
    "bottleneck": "BottleneckBlock",
    "mednext": "MedNeXtBlock",
}
ACT_CLASSES = {"leakyrelu": "LeakyReLU", "relu": "ReLU", "gelu": "GELU", "prelu": "PReLU"}


@pytest.mark.parametrize("name", sorted(BLOCK_CLASSES))
def test_every_block_name_the_spec_accepts_builds_that_block(name):
    from segkit.nn import UNet

    net = UNet(spatial_dims=2, depth=2, channels=4, block=name)
    built = {type(m).__name__ for m in net.modules()}
    assert BLOCK_CLASSES[name] in built
    assert built.isdisjoint(set(BLOCK_CLASSES.values()) - {BLOCK_CLASSES[name]})


@pytest.mark.parametrize("name", sorted(ACT_CLASSES))
def test_every_activation_name_the_spec_accepts_builds_that_activation(name):
    import torch

    from segkit.nn import UNet

    net = UNet(spatial_dims=2, depth=2, channels=4, act=name)
    acts = [m for m in net.modules() if type(m).__module__.startswith("torch.nn.modules.activ")]
    assert acts and {type(m) for m in acts} == {getattr(torch.nn, ACT_CLASSES[name])}
    if name == "leakyrelu":  # nnU-Net's slope
        assert {m.negative_slope for m in acts} == {0.01}


def test_the_spec_accepts_only_the_built_in_names():
    from segkit.spec import ACTS, BLOCKS

    assert set(BLOCKS) == set(BLOCK_CLASSES) and set(ACTS) == set(ACT_CLASSES)
    with pytest.raises(ConfigError, match="allowed: leakyrelu, relu, gelu, prelu"):
        UNetSpec.from_config(act="swish")
