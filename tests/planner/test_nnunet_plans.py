"""nnU-Net plans files (written by nnunetv2 2.8.1's planners, see benchmarks/bench_planner.py)
imported as segkit configs: the same network, parameter for parameter."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from segkit.config import compose
from segkit.errors import ConfigError
from segkit.nn import UNet
from segkit.planner.nnunet_plans import import_plans, result_from_plans
from segkit.spec import UNetSpec
from tests.planner.conftest import DATA
from tests.references import n_params, network_from_plans, param_shapes

PROSTATE = DATA / "Dataset005_Prostate"
HIPPO = DATA / "Dataset004_Hippocampus"


def plain_conv_unet_params(arch: dict, in_ch: int, classes: int) -> int:
    """PlainConvUNet's parameter count, derived by hand from its plan (no network built)."""
    n = arch["n_stages"]
    c = arch["features_per_stage"]
    k = [math.prod(v) for v in arch["kernel_sizes"]]
    s = [math.prod(v) for v in arch["strides"]]
    conv = lambda cin, cout, kv: cin * cout * kv + cout + 2 * cout  # noqa: E731 - bias, affine IN
    total, cin = 0, in_ch
    for i in range(n):
        for j in range(arch["n_conv_per_stage"][i]):
            total += conv(cin if j == 0 else c[i], c[i], k[i])
        cin = c[i]
    for i in range(n - 2, -1, -1):
        total += c[i + 1] * c[i] * s[i + 1] + c[i]  # transposed conv, kernel = stride
        for j in range(arch["n_conv_per_stage_decoder"][i]):
            total += conv(2 * c[i] if j == 0 else c[i], c[i], k[i])
        total += c[i] * classes + classes  # one logits head per decoder stage
    return total


def _module_params(model: dict) -> int:
    return sum(p.numel() for p in UNet(UNetSpec.from_config(model)).parameters())


@pytest.mark.parametrize(
    ("folder", "configuration", "in_ch", "classes"),
    [(PROSTATE, "3d_fullres", 2, 3), (PROSTATE, "2d", 2, 3), (HIPPO, "3d_fullres", 1, 3)],
)
def test_plain_conv_unet_plans_give_the_same_parameter_count(folder, configuration, in_ch, classes):
    out = import_plans(folder / "nnUNetPlans.json", configuration)
    assert out["network_class"] == "PlainConvUNet"
    model = dict(out["model"], in_channels=in_ch, out_channels=classes)
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    arch = plans["configurations"][configuration]["architecture"]["arch_kwargs"]
    assert _module_params(model) == plain_conv_unet_params(arch, in_ch, classes)


def test_axes_are_mapped_back_to_segkit_order():
    out = import_plans(PROSTATE / "nnUNetPlans.json", "3d_fullres")
    # nnU-Net: patch [20, 320, 256], spacing [3.6, 0.62, 0.62] (transpose_forward [0, 1, 2])
    assert out["data"]["patch_size"] == [256, 320, 20]
    assert out["data"]["target_spacing"] == [0.62, 0.62, 3.6]
    assert out["model"]["strides"][1] == [2, 2, 1] and out["model"]["kernel_size"][0] == [3, 3, 1]
    two = import_plans(PROSTATE / "nnUNetPlans.json", "2d")
    assert two["slice_axis"] == 2 and two["data"]["patch_size"] == [320, 320]
    assert two["data"]["target_spacing"] == [0.62, 0.62, 3.6]


def test_import_through_the_config_reads_classes_beside_the_plans():
    cfg = compose([f"planner.plans={PROSTATE / 'nnUNetPlans.json'}"])
    r = result_from_plans(cfg)
    assert (r.spec.in_channels, r.spec.out_channels) == (2, 3)
    assert r.batch_size == 2 and r.patch_size == (256, 320, 20)
    assert r.plan.output_size == r.patch_size


def test_unknown_configuration_lists_the_known_ones():
    with pytest.raises(ConfigError, match="it has: 2d, 3d_fullres"):
        import_plans(PROSTATE / "nnUNetPlans.json", "3d_lowres")


def test_same_network_as_dynamic_network_architectures():
    # DNA is installed by `make test` (--no-deps): a missing reference fails, never skips.
    # The reference is built from the plans file alone, as nnU-Net builds it.
    files = [
        (PROSTATE / "nnUNetPlans.json", 2),
        (HIPPO / "nnUNetPlans.json", 1),
        (PROSTATE / "nnUNetResEncUNetLPlans.json", 2),
    ]
    resenc = OmegaConf.to_container(compose(["model=resenc"]).model, resolve=True)
    for path, in_ch in files:
        plans = json.loads(path.read_text())
        for name, conf in plans["configurations"].items():
            out = import_plans(path, name, resenc_family=resenc)
            arch = conf["architecture"]
            assert arch["network_class_name"].endswith("." + out["network_class"])
            model = dict(out["model"], in_channels=in_ch, out_channels=3)
            with torch.device("meta"):
                ref = network_from_plans(arch, in_ch, 3)
                seg = UNet(UNetSpec.from_config(model))
            assert n_params(seg) == n_params(ref), (path.name, name)
            assert param_shapes(seg) == param_shapes(ref, reverse_axes=True), (path.name, name)
