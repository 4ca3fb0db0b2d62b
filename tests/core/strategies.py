"""Hypothesis strategies shared by the U-Net and plan tests: networks and explicit layers."""

from __future__ import annotations

from hypothesis import strategies as st

from segkit.spec import UNetSpec

SE_BLOCK = {"_target_": "tests.core.custom_blocks.SEBlock", "reduction": 2}
BLOCK_CHOICES = ["plain", "residual", "bottleneck", "mednext", SE_BLOCK]


@st.composite
def specs(draw):
    """A network: 2D/3D, depth 1–5, kernels 1–7 per axis, strides per axis, dilation,
    every block, down- and upsampling choice, stem, merge, norm and activation."""
    ndim = draw(st.sampled_from([2, 3]))
    depth = draw(st.integers(1, 5))
    axes = st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)
    kernel = draw(st.lists(axes, min_size=depth, max_size=depth))
    strides = [[1] * ndim] + draw(
        st.lists(
            st.lists(st.integers(1, 3 if ndim == 2 else 2), min_size=ndim, max_size=ndim),
            min_size=depth - 1,
            max_size=depth - 1,
        )
    )
    dilation = draw(st.lists(st.sampled_from([1, 1, 2]), min_size=depth, max_size=depth))
    upsample = draw(st.sampled_from(["transposed", "interpolate", "mednext"]))
    up = draw(st.one_of(st.none(), st.integers(1, 4)))
    stem = draw(st.sampled_from([None, "conv", "conv1x1"]))
    cfg = dict(
        spatial_dims=ndim,
        in_channels=draw(st.integers(1, 2)),
        out_channels=2,
        depth=depth,
        channels=[draw(st.integers(2, 4)) for _ in range(depth)],
        kernel_size=kernel,
        strides=strides,
        dilation=dilation,
        convs_per_stage=draw(st.integers(1, 2)),
        blocks_per_stage=draw(st.integers(1, 2)),
        blocks_per_stage_decoder=draw(st.integers(1, 2)),
        encoder_block=draw(st.sampled_from(BLOCK_CHOICES)),
        decoder_block=draw(st.sampled_from(BLOCK_CHOICES)),
        expansion=draw(st.integers(1, 3)),
        grn=draw(st.booleans()),
        shortcut=draw(st.sampled_from(["conv", "avgpool"])),
        skip_merge=draw(st.sampled_from(["concat", "add"])),
        stem=stem,
        stem_channels=draw(st.one_of(st.none(), st.integers(2, 3))) if stem else None,
        norm=draw(st.sampled_from(["instance", "batch", "group", "none"])),
        act=draw(st.sampled_from(["leakyrelu", "relu", "gelu", "prelu"])),
        dropout=draw(st.sampled_from([0.0, 0.0, 0.2])),
        downsample=draw(st.sampled_from(["conv", "maxpool", "avgpool"])),
        upsample=upsample,
        up_kernel_size=up,
        deep_supervision=draw(st.booleans()),
    )
    return UNetSpec.from_config(cfg)


def _padding(draw):
    return draw(
        st.one_of(
            st.sampled_from(["same", "valid"]),
            st.integers(0, 2),
            st.lists(st.integers(0, 2), min_size=2, max_size=2),
        )
    )


@st.composite
def explicit_layer(draw):
    """Every argument an explicit layer accepts (plan_layers' docstring), valid or not."""
    kind = draw(st.sampled_from(["conv", "maxpool", "avgpool", "transposed"]))
    layer = dict(type=kind, kernel_size=draw(st.integers(1, 4)))
    if draw(st.booleans()):
        layer["stride"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        layer["dilation"] = draw(st.integers(1, 2))
    if kind == "transposed":
        layer["padding"] = draw(st.integers(0, 2))
        layer["output_padding"] = draw(st.integers(0, 2))
    elif draw(st.booleans()):
        layer["padding"] = _padding(draw)
    if kind in ("conv", "transposed") and draw(st.booleans()):
        layer["out_channels"] = draw(st.integers(1, 3))
    return layer
