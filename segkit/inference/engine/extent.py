"""Does a network's answer at a voxel depend on the extent of its input? (for ``decide``)

A whole-volume pass gives a sliding window's answer only where every module is local (no
statistics of the whole input, :func:`extent_dependence`) and the whole volume's levels
have the grids the training patches had (:func:`grid_mismatch`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

# A whole-volume pass gives the sliding window's answer only if the output at a voxel depends
# on a bounded neighbourhood of the input, never on statistics of all of it. Each class below
# was read for that (exact type: a subclass may override forward). Any other module that
# does not declare ``depends_on_extent`` is taken to depend on the extent, so ``auto`` slides.

_LOCAL_TORCH: frozenset[type[nn.Module]] = frozenset(
    {
        # containers: they only hold modules, which are audited one by one
        nn.Sequential,
        nn.ModuleList,
        nn.ModuleDict,
        nn.Identity,
        # fixed kernels
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
        nn.MaxPool1d,
        nn.MaxPool2d,
        nn.MaxPool3d,
        nn.AvgPool1d,
        nn.AvgPool2d,
        nn.AvgPool3d,
        # pointwise
        nn.Dropout,
        nn.Dropout1d,
        nn.Dropout2d,
        nn.Dropout3d,
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.PReLU,
        nn.ELU,
        nn.GELU,
        nn.SiLU,
        nn.Mish,
        nn.Hardswish,
        nn.Sigmoid,
        nn.Tanh,
    }
)
# with running statistics in eval mode: a fixed per-channel affine map
_RUNNING_NORMS: frozenset[type[nn.Module]] = frozenset(
    {
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.SyncBatchNorm,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
    }
)
_GLOBAL_POOLS = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


# segkit's own modules (in segkit.nn), read for locality: convs with fixed kernels and "same"
# padding, transposed convs whose output_padding/crop touch only the end of an axis, ceil-mode
# average pools, merges, interpolation to the skip's size. They read bounded neighbourhoods,
# but the grids of their levels follow the parity of the input size (output_padding, crop,
# interpolation ratio): grid_mismatch keeps whole passes to sizes with the patches' grids.
# GRN declares itself. Named, not imported, so a class moving between modules keeps its audit.
AUDITED_SEGKIT_MODULES = frozenset(
    {
        "UNet",
        "EncoderStage",
        "DecoderStage",
        "ConvNormAct",
        "Shortcut",
        "PlainBlock",
        "_Residual",
        "ResidualBlock",
        "BottleneckBlock",
        "MedNeXtBlock",
        "UpTransposed",
        "UpInterp",
        "MedNeXtUp",
        "Merge",
        "_Pad",
    }
)


def _audited_segkit(kind: type) -> bool:
    return kind.__module__.startswith("segkit.nn.") and kind.__qualname__ in AUDITED_SEGKIT_MODULES


def _module_dependence(name: str, module: nn.Module) -> str | None:
    where = f"{type(module).__name__} ({name or 'the network'})"
    declared = getattr(module, "depends_on_extent", None)
    if declared is not None:
        return f"{where} uses statistics of the whole input" if declared else None
    running = getattr(module, "track_running_stats", False) and not module.training
    if isinstance(module, nn.modules.instancenorm._InstanceNorm) and not running:
        return f"instance norm {where} normalises with statistics of the whole input"
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not running:
        state = "in training mode" if module.training else "without running statistics"
        return f"batch norm {where} {state} normalises with the input's statistics"
    if isinstance(module, nn.GroupNorm):
        return f"group norm {where} normalises with statistics of the whole input"
    if isinstance(module, nn.LayerNorm):
        return f"layer norm {where} normalises over its trailing (spatial) axes"
    if isinstance(module, _GLOBAL_POOLS):
        return f"adaptive pooling {where} pools over fractions of the whole input"
    kind = type(module)
    if kind in _LOCAL_TORCH or kind in _RUNNING_NORMS or _audited_segkit(kind):
        return None
    return (
        f"{kind.__module__}.{kind.__qualname__} ({name or 'the network'}) does not declare "
        "depends_on_extent, so it may pool or normalise over the whole input (set the class "
        "attribute depends_on_extent = False if its output at a voxel depends only on a "
        "bounded neighbourhood)"
    )


def extent_dependence(net: nn.Module) -> str | None:
    """Why the network's output at a voxel may depend on the extent of its input, or None.

    None only if every module is known to be local: one of the audited torch layers
    (convs, transposed convs, fixed-kernel pools, pointwise activations and dropout,
    containers), batch norm (or instance norm with running statistics) in eval mode, one of
    segkit's own blocks, or a module declaring ``depends_on_extent = False``. Instance,
    group and layer norm, batch norm in training mode, adaptive (global) pooling, GRN and
    any module that declares nothing (a user block may pool globally, as
    squeeze-and-excitation does) make it extent-dependent. A declaration covers the
    module's own forward; its children are checked too.
    """
    for name, module in net.named_modules():
        why = _module_dependence(name, module)
        if why is not None:
            return why
    return None


def total_stride(net: nn.Module, ndim: int) -> tuple[int, ...]:
    """The product of the network's strides per axis (1 where it has no spec)."""
    strides = getattr(getattr(net, "spec", None), "strides", None)
    if not strides:
        return (1,) * ndim
    return tuple(math.prod(axis) for axis in zip(*strides))


def grid_mismatch(net: nn.Module, size: Sequence[int], patch: Sequence[int]) -> str | None:
    """Why a whole pass at ``size`` would not see the grids the training patches saw, or None.

    Wherever ``size − patch`` is not a multiple of the total stride, some level of the
    whole volume has a size remainder the training patches never had: its output_padding
    and end crop differ (the decoder's grid itself is the same at every size, see
    :func:`segkit.shapes.fit_transposed`), and a linear interpolation stretches by another
    ratio. Measured on a trained batch-norm U-Net, ``python benchmarks/bench_bn_whole.py
    --threads 1 --sizes 64x64x48 65x63x47 81x77x53``: mean Dice whole vs sliding 0.931 vs
    0.931 at 64×64×48 (≡ patch), 0.909 vs 0.929 at 65×63×47 and 0.914 vs 0.933 at 81×77×53
    (0.81 vs 0.93 before the decoder kept one grid), so those sizes slide.
    """
    stride = total_stride(net, len(size))
    off = [a for a, (n, p, t) in enumerate(zip(size, patch, stride)) if (n - p) % t]
    if off:
        return (
            f"axis {', '.join(map(str, off))} of the volume is not the patch size plus a "
            f"multiple of the network's total stride {'×'.join(map(str, stride))}, so the "
            "levels' remainders, output padding and crops would differ from the patches'"
        )
    linear = any(
        getattr(m, "mode", None) in ("linear", "bilinear", "trilinear") for m in net.modules()
    )
    if linear and any(p % t for p, t in zip(patch, stride)):
        return (
            f"the patch is not a multiple of the network's total stride "
            f"{'×'.join(map(str, stride))}, so linear interpolation of the whole volume would "
            "stretch another grid than the patches'"
        )
    return None
