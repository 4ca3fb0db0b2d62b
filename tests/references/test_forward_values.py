"""Forward values: each preset against its reference built live with the same configuration,
the reference's weights copied into segkit's network by :mod:`segkit.nn.weights`, logits and
deep-supervision outputs compared on random input, in train and in eval mode.

References: dynamic-network-architectures 0.4.4 ``PlainConvUNet`` and ``ResidualEncoderUNet``
(built from architecture entries nnU-Net 2.8.1 wrote, as nnU-Net builds them), MONAI 1.6.1
``MedNeXt`` (``create_mednext``'s configuration) and ``DynUNet``. Widths are shrunk alike on
both sides (depth, blocks, kernels, strides and expansion ratios are the preset's) so the file
runs in seconds; sizes are multiples of the total stride, as the references need, with at least
2 voxels per axis at the bottleneck. The tolerance is :func:`~tests.references.float32_tolerance`
(derived there); every parameter is drawn at random first (:func:`~tests.references.randomise`).
"""

from __future__ import annotations

import functools
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks.mednext_block import MedNeXtBlock as MonaiMedNeXtBlock
from monai.networks.nets import DynUNet
from monai.networks.nets import mednext as monai_mednext
from torch import nn

from segkit.nn import UNet
from segkit.nn.weights import (
    WeightMapError,
    dna_state_dict,
    map_dna_plain_conv_unet,
    map_dna_residual_encoder_unet,
    map_monai_dynunet,
    map_monai_mednext,
)
from tests.references import (
    CLASSES,
    float32_tolerance,
    network_from_plans,
    plans_architecture,
    randomise,
    segkit_net,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside MONAI 1.6
torch.set_num_threads(1)


def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, list | tuple) else [out]


def compare(
    seg: UNet,
    ref: nn.Module,
    size: tuple[int, ...],
    *,
    batch: int = 1,
    to_ref=lambda x: x,
    from_ref=lambda y: y,
    ref_train=_outputs,
) -> float:
    """Largest error over train and eval mode, every output, relative to that output's
    largest value; asserts it is within :func:`float32_tolerance` and returns it.

    ``to_ref``/``from_ref`` carry the input into the reference's axis order and its outputs
    back; ``ref_train`` turns the reference's training output into a list, largest first.
    """
    x = torch.randn(batch, 1, *size, generator=torch.Generator().manual_seed(1))
    tol = float32_tolerance(seg)
    worst = 0.0
    for training in (True, False):
        seg.train(training)
        ref.train(training)
        with torch.no_grad():
            got = _outputs(seg(x))
            out = ref(to_ref(x))
            want = [from_ref(y) for y in (ref_train(out) if training else _outputs(out))]
        # deep supervision: one output per decoder level while training, the logits in eval
        assert len(got) == (len(seg.heads) if training else 1)
        for level, (g, w) in enumerate(zip(got, want[: len(got)], strict=True)):
            assert g.shape == w.shape, (training, level)
            err = float((g - w).abs().max() / w.abs().max())
            assert err <= tol, f"train={training}, level {level}: {err:.2e} > {tol:.2e}"
            worst = max(worst, err)
    return worst


# ---- DNA PlainConvUNet: nnU-Net's default network --------------------------------------------

PLAIN = [
    ("nnunet_default", ("model.channels=8", "model.max_channels=80"), (64, 64, 32)),
    ("unet", ("model.channels=8", "model.max_channels=80"), (32, 32, 32)),
    ("demo", (), (16, 16, 16)),
    ("unet2d", ("model.channels=8", "model.max_channels=128"), (64, 64)),
]


@pytest.mark.parametrize(("preset", "shrink", "size"), PLAIN, ids=[p[0] for p in PLAIN])
def test_plain_presets_compute_dna_plain_conv_unet(preset, shrink, size):
    seg = segkit_net(preset, *shrink)
    config = "3d_fullres" if seg.spec.spatial_dims == 3 else "2d"
    torch.manual_seed(0)
    ref = randomise(
        network_from_plans(plans_architecture("nnUNetPlans.json", config, seg.spec), 1, CLASSES)
    )
    seg.load_state_dict(map_dna_plain_conv_unet(ref.state_dict(), seg))
    compare(seg, ref, size, batch=2 if len(size) == 2 else 1)


def test_anisotropic_preset_computes_nnunets_network_in_nnunets_axis_order():
    # nnU-Net lists axes in its transposed array order; a plans import reverses them, and a
    # checkpoint's kernels with them (map_dna_plain_conv_unet's spatial_axes)
    seg = segkit_net("anisotropic", "model.channels=8", "model.max_channels=80")
    arch = plans_architecture("nnUNetPlans.json", "3d_fullres", seg.spec)
    kw = arch["arch_kwargs"]
    kw["kernel_sizes"] = [k[::-1] for k in kw["kernel_sizes"]]
    kw["strides"] = [s[::-1] for s in kw["strides"]]
    torch.manual_seed(0)
    ref = randomise(network_from_plans(arch, 1, CLASSES))
    seg.load_state_dict(map_dna_plain_conv_unet(ref.state_dict(), seg, spatial_axes=(2, 1, 0)))
    flip = functools.partial(torch.permute, dims=(0, 1, 4, 3, 2))
    compare(seg, ref, (8, 32, 32), to_ref=flip, from_ref=flip)


# ---- DNA ResidualEncoderUNet: nnU-Net ResEnc ----------------------------------------------


def test_resenc_preset_computes_dna_residual_encoder_unet():
    seg = segkit_net("resenc", "model.channels=8", "model.max_channels=80")
    arch = plans_architecture("nnUNetResEncUNetLPlans.json", "3d_fullres", seg.spec)
    assert arch["network_class_name"].endswith(".ResidualEncoderUNet")
    assert arch["arch_kwargs"]["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6]
    torch.manual_seed(0)
    ref = randomise(network_from_plans(arch, 1, CLASSES))
    seg.load_state_dict(map_dna_residual_encoder_unet(ref.state_dict(), seg))
    compare(seg, ref, (64, 64, 32))


# ---- MONAI MedNeXt ----------------------------------------------------------------------------


def mednext_reference(variant: str, kernel: int, width: int, *, grn: bool = False) -> nn.Module:
    """MONAI's ``MedNeXt`` with ``create_mednext(variant)``'s own arguments (read off the
    factory), deep supervision on, ``init_filters=width``, random parameters."""
    args: dict = {}
    with mock.patch.object(monai_mednext, "MedNeXt", side_effect=lambda **kw: args.update(kw)):
        monai_mednext.create_mednext(
            variant, in_channels=1, out_channels=CLASSES, kernel_size=kernel, deep_supervision=True
        )
    torch.manual_seed(0)
    return randomise(
        monai_mednext.MedNeXt(**{**args, "init_filters": width, "global_resp_norm": grn})
    )


def _double(conv: nn.Module):
    """A stride-2 transposed conv sized to twice its input (output_padding 1)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return type(conv).forward(conv, x, output_size=[2 * n for n in x.shape[2:]])

    return forward


def _aligned_up(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # MONAI's block body (conv1 → norm → conv2 → GELU → GRN → conv3) on the doubled conv1,
    # plus the doubled 1×1 residual, where MONAI pads both by one voxel at the start
    return MonaiMedNeXtBlock.forward(block, x) + _double(block.res_conv)(x)


def align_up_blocks(ref: nn.Module) -> nn.Module:
    """MONAI's up blocks with segkit's alignment (see ``map_monai_mednext``): coarse voxel
    ``i`` lands on fine voxel ``2i``, as the adjoint of the strided down conv; MONAI (as the
    original MedNeXt) shifts it to ``2i + 1`` and zero-fills voxel 0. Nothing else changes."""
    for up in ref.up_blocks:
        up.conv1.forward = _double(up.conv1)
        up.forward = functools.partial(_aligned_up, up)
    return ref


def _mednext_train(out) -> list[torch.Tensor]:
    # MONAI: (level 0, level 1, ..., bottleneck); segkit has no bottleneck head
    return list(out)


MEDNEXT = [("S", 3), ("B", 3), ("M", 3), ("L", 3), ("S", 5)]


@pytest.mark.parametrize(("variant", "kernel"), MEDNEXT, ids=[f"{v}k{k}" for v, k in MEDNEXT])
def test_mednext_presets_compute_monais_mednext(variant, kernel):
    seg = segkit_net(
        f"mednext_{variant.lower()}",
        f"model.kernel_size={kernel}",
        "model.channels=8",
        "model.max_channels=128",
    )
    ref = mednext_reference(variant, kernel, 8)
    seg.load_state_dict(map_monai_mednext(ref.state_dict(), seg))
    compare(seg, align_up_blocks(ref), (32, 32, 32), ref_train=_mednext_train)


def test_mednext_with_grn_computes_monais_mednext_with_grn():
    # MONAI's down blocks have no GRN: the mapping gives segkit's gamma = beta = 0 there
    seg = segkit_net("mednext_s", "model.grn=true", "model.channels=8", "model.max_channels=128")
    ref = mednext_reference("S", 3, 8, grn=True)
    state = map_monai_mednext(ref.state_dict(), seg)
    assert not state["encoder.1.blocks.0.grn.gamma"].any()
    assert state["encoder.1.blocks.1.grn.gamma"].abs().min() > 0
    seg.load_state_dict(state)
    compare(seg, align_up_blocks(ref), (32, 32, 32), ref_train=_mednext_train)


def test_monais_own_up_block_is_one_voxel_off_segkits():
    # the one known difference, pinned: with MONAI's own alignment the logits differ by
    # O(1) (not by rounding), so the aligned comparison above is what carries the check
    seg = segkit_net("mednext_s", "model.channels=8", "model.max_channels=128").eval()
    ref = mednext_reference("S", 3, 8).eval()
    seg.load_state_dict(map_monai_mednext(ref.state_dict(), seg))
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(x), seg(x)
        assert float((got - want).abs().max() / want.abs().max()) > 0.1
        assert torch.allclose(got, align_up_blocks(ref)(x), rtol=0, atol=1e-4)


# ---- MONAI DynUNet ----------------------------------------------------------------------------


def dynunet_reference(seg: UNet, *, res_block: bool) -> nn.Module:
    s = seg.spec
    torch.manual_seed(0)
    ref = DynUNet(
        s.spatial_dims,
        1,
        CLASSES,
        kernel_size=[list(k) for k in s.kernel_size],
        strides=[list(v) for v in s.strides],
        upsample_kernel_size=[list(v) for v in s.strides[1:]],
        filters=list(s.channels),
        res_block=res_block,
        deep_supervision=True,
        deep_supr_num=s.depth - 2,
    )
    return randomise(ref)


def _dynunet_train(out: torch.Tensor) -> list[torch.Tensor]:
    return list(out.unbind(dim=1))


def _nearest_to_full(seg: UNet):
    """segkit's training outputs as DynUNet returns them: heads resized (nearest) to the
    logits' size."""
    forward = seg.forward

    def resized(x):
        out = forward(x)
        if not isinstance(out, list):
            return out
        return [out[0], *(F.interpolate(o, out[0].shape[2:]) for o in out[1:])]

    seg.forward = resized
    return seg


@pytest.mark.parametrize(
    ("preset", "res_block"),
    [("unet", False), ("resunet", True)],
)
def test_unet_and_resunet_compute_monais_dynunet(preset, res_block):
    # DynUNet: no conv biases; residual blocks in the encoder only (model.decoder_block=plain)
    seg = segkit_net(
        preset, "model.conv_bias=false", "model.decoder_block=plain", "model.channels=8"
    )
    ref = dynunet_reference(seg, res_block=res_block)
    seg.load_state_dict(map_monai_dynunet(ref.state_dict(), seg))
    compare(_nearest_to_full(seg), ref, (32, 32, 32), ref_train=_dynunet_train)


# ---- the mapping's errors -----------------------------------------------------------------


def _tiny_dna(depth: int, kernel: int = 3) -> nn.Module:
    seg = UNet(depth=depth, channels=4, max_channels=8, kernel_size=kernel, deep_supervision=True)
    return network_from_plans(plans_architecture("nnUNetPlans.json", "3d_fullres", seg.spec), 1, 2)


def test_a_state_dict_that_does_not_fit_is_refused_naming_every_key():
    deeper = _tiny_dna(4).state_dict()
    net = UNet(depth=3, channels=4, max_channels=8, deep_supervision=True)
    with pytest.raises(WeightMapError) as err:
        map_dna_plain_conv_unet(deeper, net)
    text = str(err.value)
    assert (
        "reference tensors left over" in text and "encoder.stages.3.0.convs.0.conv.weight" in text
    )
    assert "shapes that differ" in text  # the decoder sits one level lower
    with pytest.raises(WeightMapError, match=r"missing \(\d+\): encoder\.3\.blocks\.0"):
        map_dna_plain_conv_unet(
            _tiny_dna(3).state_dict(), UNet(depth=4, channels=4, max_channels=8)
        )
    with pytest.raises(
        WeightMapError, match=r"encoder\.0\.blocks\.0\.convs\.0\.conv\.weight \(4, 1, 5, 5, 5\) vs"
    ):
        map_dna_plain_conv_unet(
            _tiny_dna(3).state_dict(), UNet(depth=3, channels=4, max_channels=8, kernel_size=5)
        )


def test_settings_a_state_dict_cannot_show_are_checked():
    state = _tiny_dna(3).state_dict()
    for overrides, match in [
        ({"downsample": "maxpool"}, "model.downsample='maxpool' \\(needs 'conv'\\)"),
        ({"upsample": "interpolate"}, "Fix: model.upsample=transposed"),
        ({"block": "residual"}, "block 0 is a ResidualBlock; DNA PlainConvUNet has PlainBlock"),
        ({"blocks_per_stage": 2}, "has 2 blocks; DNA PlainConvUNet has one"),
    ]:
        net = UNet(depth=3, channels=4, max_channels=8, **overrides)
        with pytest.raises(WeightMapError, match=match):
            map_dna_plain_conv_unet(state, net)


def test_copies_and_unused_deep_supervision_heads_are_accepted():
    torch.manual_seed(0)
    ref = randomise(_tiny_dna(3))
    state = ref.state_dict()
    assert any(".all_modules." in k for k in state) and any(
        k.startswith("decoder.encoder.") for k in state
    )
    # a checkpoint whose shared storage was lost on the way: the copies are equal, not shared
    unshared = {k: v.clone() for k, v in state.items()}
    net = UNet(depth=3, channels=4, max_channels=8, out_channels=2, deep_supervision=False)
    net.load_state_dict(map_dna_plain_conv_unet(unshared, net))
    ref.eval()
    net.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x)[0], rtol=0, atol=1e-5)
    unshared["encoder.stages.0.0.convs.0.all_modules.0.weight"] += 1  # not a copy any more
    with pytest.raises(
        WeightMapError, match="left over \\(1\\): encoder.stages.0.0.convs.0.all_modules.0.weight"
    ):
        map_dna_plain_conv_unet(unshared, net)


# ---- the way back: segkit's weights as DNA's state dict (segkit export format=nnunet) ---------


@pytest.mark.parametrize(
    ("preset", "plans_file", "shrink", "size"),
    [
        (
            "nnunet_default",
            "nnUNetPlans.json",
            ("model.channels=8", "model.max_channels=80"),
            (64, 64, 32),
        ),
        (
            "resenc",
            "nnUNetResEncUNetLPlans.json",
            ("model.channels=8", "model.max_channels=80"),
            (64, 64, 32),
        ),
    ],
    ids=["plain", "resenc"],
)
def test_dna_state_dict_loads_strictly_into_dna_and_computes_the_same(
    preset, plans_file, shrink, size
):
    # the reference is built from the plans entry alone and takes the state dict strictly:
    # every key DNA registers (aliases included), nothing more
    seg = randomise(segkit_net(preset, *shrink))
    cls, state = dna_state_dict(seg)
    arch = plans_architecture(plans_file, "3d_fullres", seg.spec)
    assert arch["network_class_name"].endswith("." + cls)
    ref = network_from_plans(arch, 1, CLASSES)
    ref.load_state_dict(state, strict=True)
    compare(seg, ref, size)
