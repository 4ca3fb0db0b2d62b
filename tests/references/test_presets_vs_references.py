"""segkit's presets against the reference implementations, built live in the same process:
nnU-Net's 3d_fullres network and ResEnc-L (dynamic-network-architectures 0.4.4 ``PlainConvUNet``
and ``ResidualEncoderUNet``, built from ``nnUNetPlans``/``nnUNetResEncUNetLPlans`` architecture
entries the way nnU-Net builds them) and MedNeXt S/B/M/L
(MONAI 1.6.1 ``create_mednext``). ``make test`` installs both (pyproject's dev extra holds
monai, the Makefile's install step adds DNA and einops with ``--no-deps``), so a missing
reference fails here instead of skipping.

Compared: the parameter count, the multiset of parameter shapes (so two errors cannot cancel
in the sum) and the output shapes on an input both accept, on the meta device (shapes only,
no allocation: the whole file runs in a few seconds), and that the weight mapping
(:mod:`segkit.nn.weights`) places every tensor of the full-width networks. The values, with the
reference's weights copied in: test_forward_values.py."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from monai.networks.nets.mednext import create_mednext
from torch import nn

from segkit.nn.weights import (
    map_dna_plain_conv_unet,
    map_dna_residual_encoder_unet,
    map_monai_mednext,
)
from tests.planner.conftest import DATA
from tests.references import (
    CLASSES,
    n_params,
    network_from_plans,
    param_shapes,
    plans_architecture,
    segkit_net,
)

# The values the references gave when these tests were written (DNA 0.4.4 with every deep
# supervision head, which it always builds; MONAI 1.6.1 with deep supervision off). The live
# reference is the evidence; these only make a change of the pinned reference versions loud.
PINNED_PARAMS = {
    "resenc": 102_350_575,
    "nnunet_default": 31_196_399,
    ("S", 3): 5_550_947,
    ("B", 3): 10_510_883,
    ("M", 3): 17_533_539,
    ("L", 3): 61_726_787,
    ("S", 5): 5_980_579,
}


def resenc_l_architecture(n_stages: int = 6) -> dict:
    """An isotropic 3D ``nnUNetResEncUNetLPlans`` architecture entry with ``n_stages`` stages.

    Everything but the geometry is read from a plans file nnU-Net 2.8.1's ResEnc-L planner
    wrote (Dataset005_Prostate, 3d_fullres): block class, blocks per stage, decoder convs,
    widths, norm, nonlinearity, bias. The geometry is what that planner gives an isotropic
    dataset whose patch admits ``n_stages - 1`` poolings (e.g. 160³ → 6 stages): 3×3×3
    kernels, stride 1 then 2 on every axis.
    """
    plans = json.loads((DATA / "Dataset005_Prostate" / "nnUNetResEncUNetLPlans.json").read_text())
    arch = copy.deepcopy(plans["configurations"]["3d_fullres"]["architecture"])
    kw = arch["arch_kwargs"]
    kw["n_stages"] = n_stages
    kw["kernel_sizes"] = [[3, 3, 3]] * n_stages
    kw["strides"] = [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1)
    for key in ("features_per_stage", "n_blocks_per_stage"):
        kw[key] = kw[key][:n_stages]
    kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][: n_stages - 1]
    return arch


def out_shapes(net: nn.Module, size: tuple[int, ...]) -> list[tuple[int, ...]]:
    with torch.no_grad():
        out = net(torch.randn(1, 1, *size, device="meta"))
    return [tuple(o.shape) for o in (out if isinstance(out, list | tuple) else [out])]


def test_the_resenc_l_entry_is_nnunets_residual_encoder_unet():
    arch = resenc_l_architecture()
    assert arch["network_class_name"].endswith(".ResidualEncoderUNet")
    assert arch["arch_kwargs"]["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6]
    with torch.device("meta"):
        assert isinstance(network_from_plans(arch, 1, CLASSES), ResidualEncoderUNet)


def test_resenc_preset_is_nnunets_resenc_l_network():
    with torch.device("meta"):
        ref = network_from_plans(resenc_l_architecture(), 1, CLASSES)
        seg = segkit_net("resenc", "model.deep_supervision=true")
    assert n_params(seg) == n_params(ref) == PINNED_PARAMS["resenc"]
    assert param_shapes(seg) == param_shapes(ref)
    # every tensor of the full-width network has its place (names and shapes, on meta)
    assert map_dna_residual_encoder_unet(ref.state_dict(), seg).keys() == seg.state_dict().keys()
    # training mode, deep supervision: one head per decoder level, largest first, on both.
    # 64³: DNA needs a multiple of 32, and instance norm more than one voxel at the bottleneck
    size = (64, 64, 64)
    assert out_shapes(seg.train(), size) == out_shapes(ref.train(), size)
    assert out_shapes(seg, size)[0] == (1, CLASSES, *size)


def test_nnunet_default_preset_is_nnunets_plain_conv_unet():
    with torch.device("meta"):
        seg = segkit_net("nnunet_default")
        arch = plans_architecture("nnUNetPlans.json", "3d_fullres", seg.spec)
        ref = network_from_plans(arch, 1, CLASSES)
    assert seg.spec.channels == (32, 64, 128, 256, 320, 320)
    assert n_params(seg) == n_params(ref) == PINNED_PARAMS["nnunet_default"]
    assert param_shapes(seg) == param_shapes(ref)
    assert map_dna_plain_conv_unet(ref.state_dict(), seg).keys() == seg.state_dict().keys()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside MONAI 1.6
@pytest.mark.parametrize(("variant", "kernel"), [("S", 3), ("B", 3), ("M", 3), ("L", 3), ("S", 5)])
def test_mednext_presets_are_monais_create_mednext(variant, kernel):
    with torch.device("meta"):
        ref = create_mednext(
            variant, spatial_dims=3, in_channels=1, out_channels=CLASSES, kernel_size=kernel
        )
        seg = segkit_net(
            f"mednext_{variant.lower()}",
            "model.deep_supervision=false",
            f"model.kernel_size={kernel}",
        )
    assert n_params(seg) == n_params(ref) == PINNED_PARAMS[(variant, kernel)]
    assert param_shapes(seg) == param_shapes(ref)
    assert map_monai_mednext(ref.state_dict(), seg).keys() == seg.state_dict().keys()
    size = (32, 32, 32)  # MONAI's MedNeXt needs a multiple of 16
    assert out_shapes(seg.eval(), size) == out_shapes(ref.eval(), size) == [(1, CLASSES, *size)]
