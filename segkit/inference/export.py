"""Export a trained U-Net to ONNX or TorchScript, valid for every input size.

The eager :class:`~segkit.nn.UNet` solves each transposed convolution's
``output_padding`` and crop from the skip's size in Python; a tracer would bake
those numbers for the one example size. :class:`ExportableUNet` computes the
same result with shape-free tensor ops instead: the transposed convolution runs
without padding (its "full" output), and the window of it that equals the skip
is sliced out using the skip's size, which tracing and ``torch.export`` keep
symbolic. Both exports are then checked against the eager model on two odd
input sizes that differ from the example size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segkit.data.io import atomic_path
from segkit.errors import ConfigError, ExportError
from segkit.nn import UNet
from segkit.nn.blocks import UpTransposed
from segkit.shapes import up_padding

FORMATS = ("onnx", "torchscript")


class _ShapeFreeUp(nn.Module):
    """``UpTransposed`` rewritten so no size is computed in Python.

    With padding ``p``, output_padding ``op`` and the one-sided crop ``c`` of
    the eager layer, output voxel ``i`` is voxel ``p + i`` of the full (unpadded)
    transposed convolution; voxels past the full output carry only the bias (the
    output_padding region), and with ``c < 0`` the last ``-c`` voxels are zeros.
    ``c`` is constant per axis; ``p`` is :func:`~segkit.shapes.up_padding`, one
    more when ``P + u − e`` is odd, the stride ≥ 2 and the remainder
    ``(S + P − e) mod s`` is 0 (see :func:`~segkit.shapes.fit_transposed`); that
    choice is written with integer arithmetic on the skip's size, which the
    exporters keep symbolic.
    """

    def __init__(self, up: UpTransposed) -> None:
        super().__init__()
        self.conv = up.conv
        self.stride = tuple(int(s) for s in up.stride)
        pads, crops, shifts, offsets = [], [], [], []
        for down, kernel in zip(up.downs, up.kernel):
            p = up_padding(down, kernel)
            total = down.pad_lo + down.pad_hi + kernel - down.extent
            shift = total >= 0 and total % 2 == 1 and down.stride >= 2
            pads.append(p)
            shifts.append(shift)
            offsets.append(down.pad_lo + down.pad_hi - down.extent)
            # the remaining crop = out − skip does not depend on the size
            crops.append(0 if shift else total - 2 * p)
        self.pads = tuple(pads)
        self.shifts = tuple(shifts)
        self.offsets = tuple(offsets)
        self.zero_tail = tuple(max(0, -c) for c in crops)
        self.extra = tuple(s + z for s, z in zip(self.stride, self.zero_tail))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        ndim = x.dim() - 2
        conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[ndim - 1]
        y = conv_t(x, self.conv.weight, None, self.stride)
        y = F.pad(y, [v for e in reversed(self.extra) for v in (0, e)])
        if self.conv.bias is not None:
            y = y + self.conv.bias.view(1, -1, *([1] * ndim))
        for axis in range(ndim):
            size = skip.shape[axis + 2]
            start = self.pads[axis]
            if self.shifts[axis]:
                s = self.stride[axis]
                remainder = (size + self.offsets[axis]) % s
                start = start + 1 - (remainder + s - 1) // s  # +1 exactly when remainder == 0
            y = y.narrow(axis + 2, start, size)
            tail = self.zero_tail[axis]
            if tail:
                keep = y.narrow(axis + 2, 0, size - tail)
                pad = [0, 0] * (ndim - 1 - axis) + [0, tail]
                y = F.pad(keep, pad)
        return y


class _ShapeFreeInterp(nn.Module):
    def __init__(self, up: nn.Module) -> None:
        super().__init__()
        self.conv = up.conv
        self.mode = up.mode

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        align = None if self.mode == "nearest" else False
        y = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=align)
        return self.conv(y)


class ExportableUNet(nn.Module):
    """Inference-only view of a :class:`UNet` that traces/exports for any size.

    Shares the UNet's parameters; returns the full-resolution logits.
    """

    def __init__(self, net: UNet) -> None:
        super().__init__()
        if net.spec.upsample == "mednext":
            raise ConfigError(
                "export: MedNeXt up blocks (model.upsample=mednext) cannot be exported yet; "
                "export a model with upsample=transposed or interpolate"
            )
        self.encoder = net.encoder
        self.stages = nn.ModuleList(net.decoder)  # merge (concat or add) + blocks: fuse()
        self.ups = nn.ModuleList(
            _ShapeFreeUp(stage.up)
            if isinstance(stage.up, UpTransposed)
            else _ShapeFreeInterp(stage.up)
            for stage in net.decoder
        )
        self.head = net.heads[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        for i in range(len(self.stages) - 1, -1, -1):
            skip = skips[i]
            x = self.stages[i].fuse(skip, self.ups[i](x, skip))
        return self.head(x)


@dataclass(frozen=True)
class ExportCheck:
    """Agreement of an exported model with the eager one at one input size.

    Attributes:
        size: spatial input size checked.
        max_abs_diff: largest absolute difference of the logits.
    """

    size: tuple[int, ...]
    max_abs_diff: float


def check_sizes(net: UNet, patch_size: Sequence[int]) -> list[tuple[int, ...]]:
    """Two odd sizes, different from each other and from the example, that ``net`` accepts."""
    low = [max(int(m), 5) for m in net.min_input_size]
    base = [max(lo, min(int(p), 3 * lo)) for lo, p in zip(low, patch_size)]
    first = tuple(b | 1 for b in base)
    second = tuple((b + 4) | 1 for b in base)
    return [first, second]


def example_size(net: UNet, patch_size: Sequence[int]) -> tuple[int, ...]:
    """An even example size for tracing (so the checks run on sizes it never saw)."""
    low = [max(int(m), 4) for m in net.min_input_size]
    sizes = (max(lo, min(int(p), 3 * lo)) for lo, p in zip(low, patch_size))
    return tuple(n + n % 2 for n in sizes)


def _eager(net: UNet, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return net(x)


def export_model(
    net: UNet,
    *,
    fmt: str,
    output: str | Path,
    patch_size: Sequence[int],
    check: bool = True,
    tolerance: float = 1e-3,
) -> list[ExportCheck]:
    """Writes ``net`` as ONNX (dynamic spatial axes) or TorchScript (traced) to ``output``.

    Args:
        net: the network (exported in eval mode).
        fmt: ``onnx`` or ``torchscript``.
        output: the file to write (atomically).
        patch_size: the training patch, used to choose example and check sizes.
        check: run the export on two odd sizes and compare with eager.
        tolerance: largest allowed ``max |export − eager|``, relative to the eager
            logits' largest magnitude (at least 1); above it nothing is written.

    Returns:
        One :class:`ExportCheck` per checked size.

    Raises:
        ConfigError: unknown format, or ONNX requested without ``segkit[export]``.
        ExportError: the export disagrees with the eager network beyond ``tolerance``.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format: got {fmt!r}; allowed: {', '.join(FORMATS)}")
    output = Path(output)
    net = net.eval().cpu()
    wrapper = ExportableUNet(net).eval()
    c = net.spec.in_channels
    example = torch.randn(1, c, *example_size(net, patch_size))
    sizes = check_sizes(net, patch_size)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    with atomic_path(output, suffix=suffix) as tmp:
        if fmt == "onnx":
            run = _export_onnx(wrapper, example, tmp)
        else:
            run = _export_torchscript(wrapper, example, tmp)
        checks = []
        if check:
            gen = torch.Generator().manual_seed(0)
            for size in sizes:
                x = torch.randn(2, c, *size, generator=gen)
                eager = _eager(net, x)
                diff = (run(x) - eager).abs().max().item()
                checks.append(ExportCheck(size=tuple(size), max_abs_diff=float(diff)))
                limit = tolerance * max(1.0, eager.abs().max().item())
                if not diff <= limit:  # NaN fails too
                    raise ExportError(
                        f"output={output}: the {fmt} export differs from the eager network by "
                        f"{diff:.3g} at input size {'×'.join(map(str, size))} (allowed "
                        f"{limit:.3g}); nothing was written. Fix: report this with the "
                        "checkpoint, or raise tolerance= if the difference is acceptable."
                    )
    return checks


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path):
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    traced.save(str(path))
    loaded = torch.jit.load(str(path))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(x)

    return run


def _export_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path):
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ConfigError(
            "format=onnx needs onnx and onnxruntime: pip install 'segkit[export]' "
            "(or use format=torchscript)"
        ) from err
    ndim = example.dim() - 2
    dims = {0: torch.export.Dim("batch", min=1)}
    for a in range(ndim):
        dims[a + 2] = torch.export.Dim(f"size{a}", min=2, max=4096)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            dynamic_shapes={"x": dims},
            input_names=["image"],
            output_names=["logits"],
            verbose=False,
        )
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    return run


def describe_checks(checks: Sequence[ExportCheck]) -> str:
    """One line per checked size: ``size 37×29×21: max |export − eager| = 1.2e-06``."""
    return "\n".join(
        f"size {'×'.join(map(str, c.size))}: max |export - eager| = {c.max_abs_diff:.3g}"
        for c in checks
    )


__all__ = ["ExportCheck", "ExportableUNet", "describe_checks", "export_model"]
