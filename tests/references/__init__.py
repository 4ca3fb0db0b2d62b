"""The references built live: helpers shared by the tests that compare segkit with them."""

from __future__ import annotations

import copy
import json
import math
import pydoc
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from segkit.config import compose, model_config
from segkit.nn import UNet
from segkit.spec import UNetSpec

CLASSES = 3
PLANS = Path(__file__).parents[1] / "planner" / "data" / "Dataset005_Prostate"
EPS32 = torch.finfo(torch.float32).eps


def segkit_net(preset: str, *overrides: str) -> UNet:
    """The network of ``conf/model/<preset>.yaml`` with overrides, 1 input channel, 3 classes."""
    cfg = compose([f"model={preset}", *overrides])
    return UNet(UNetSpec.from_config(model_config(cfg, num_channels=1, num_classes=CLASSES)))


def network_from_plans(arch: dict, in_channels: int, classes: int) -> nn.Module:
    """nnunetv2's ``get_network_from_plans`` for an ``architecture`` entry of a plans file:
    locate the class and the ops it names as strings, build with every deep supervision head."""
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    cls = pydoc.locate(arch["network_class_name"])
    return cls(input_channels=in_channels, num_classes=classes, deep_supervision=True, **kwargs)


def plans_architecture(plans_file: str, configuration: str, spec: UNetSpec) -> dict:
    """An architecture entry nnU-Net 2.8.1 wrote (Dataset005_Prostate) with the geometry of
    ``spec``: class, norm, nonlinearity, conv bias (and ResEnc's blocks) come from the file,
    stages, widths, kernels, strides, blocks and convs per stage from segkit's spec."""
    plans = json.loads((PLANS / plans_file).read_text())
    arch = copy.deepcopy(plans["configurations"][configuration]["architecture"])
    kw = arch["arch_kwargs"]
    kw["n_stages"] = spec.depth
    kw["features_per_stage"] = list(spec.channels)
    kw["kernel_sizes"] = [list(k) for k in spec.kernel_size]
    kw["strides"] = [list(s) for s in spec.strides]
    kw["n_conv_per_stage_decoder"] = list(spec.convs_per_stage_decoder)
    if "n_blocks_per_stage" in kw:
        kw["n_blocks_per_stage"] = list(spec.blocks_per_stage)
    else:
        kw["n_conv_per_stage"] = list(spec.convs_per_stage)
    return arch


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter but conv weights drawn at random (conv weights keep PyTorch's init):
    norm scales in [0.5, 1.5], biases, norm shifts and GRN's gamma/beta ~ N(0, 0.3²), so a
    tensor copied to the wrong place, or a scale/shift mix-up, changes the logits (at their
    default 1/0 every norm, and GRN at 0/0, would look alike)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, nn.modules.conv._ConvNd) and name == "weight":
                    continue
                if name == "weight" and p.dim() == 1:
                    p.copy_(0.5 + torch.rand(p.shape, generator=gen))
                else:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return net


def float32_tolerance(net: nn.Module) -> float:
    """Relative tolerance for one network evaluated by two implementations in float32.

    Both compute the same sums, but not in the same order: the decoder's first conv reads
    its channels in the other order (the references concatenate (upsampled, skip)), and
    oneDNN blocks and orders a conv's sum by its shapes. A conv output sums
    ``n = c_in/groups · prod(kernel)`` products, so the two results differ by rounding that
    grows like ``sqrt(n) · eps32`` relative to the values' scale (random-walk rounding; the
    inputs' own differences carry through at the same relative size). The norms bring every
    layer back to O(1), so these errors add up along the network rather than compound:
    with ``L`` convs in all, ``|Δ| ≲ L · sqrt(n_max) · eps32 · max|logits|``: 1e-4 to 8e-4
    for the shrunk presets of test_forward_values.py, where 5e-7 to 2e-6 is measured (MedNeXt:
    0, the same order of operations). A wiring error changes the logits by O(max|logits|):
    0.55 to 1.2 measured with the identity add of a residual or MedNeXt block, GRN's ``+ x``,
    MedNeXt's up-block shortcut or the concat order broken on purpose, 10^3 times the tolerance.
    """
    convs = [m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    n_max = max(m.in_channels // m.groups * math.prod(m.kernel_size) for m in convs)
    return len(convs) * math.sqrt(n_max) * EPS32


def param_shapes(net: nn.Module, *, reverse_axes: bool = False) -> Counter:
    """Parameter shapes in (out, in, *kernel) layout: a transposed conv stores (in, out, ...),
    and MONAI's 1×1 output head is a transposed conv where segkit's is a conv.
    ``reverse_axes``: kernel axes reversed (nnU-Net's plans list axes z, y, x; segkit x, y, z)."""
    shapes: Counter = Counter()
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            shape = tuple(p.shape)
            if name == "weight" and isinstance(module, nn.modules.conv._ConvTransposeNd):
                shape = (shape[1], shape[0], *shape[2:])
            if reverse_axes:
                shape = (*shape[:2], *shape[:1:-1])
            shapes[shape] += 1
    return shapes


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
