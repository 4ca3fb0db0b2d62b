"""Export a trained U-Net to ONNX or TorchScript, valid for every input size.

The eager :class:`~segkit.nn.UNet` solves each transposed convolution's
``output_padding`` and crop from the skip's size in Python; a tracer would bake
those numbers for the one example size. Its ``traceable=True`` forward, which
:class:`ExportableUNet` runs, computes the same result with shape-free tensor ops
instead (:mod:`segkit.nn.up`): the transposed convolution runs without padding (its
"full" output), and the window of it that equals the skip is sliced out using the
skip's size, which tracing and ``torch.export`` keep symbolic. Both exports are then
checked against the eager model on two odd input sizes that differ from the example size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segkit.errors import ConfigError, ExportError
from segkit.fsio import atomic_path
from segkit.nn import UNet

FORMATS = ("onnx", "torchscript")


class ExportableUNet(nn.Module):
    """Inference-only view of a :class:`UNet` that traces/exports for any size.

    Shares the UNet's parameters and runs its own forward with ``traceable=True``
    (every size-dependent number from tensor-shape arithmetic); returns the
    full-resolution logits.
    """

    def __init__(self, net: UNet) -> None:
        super().__init__()
        if net.spec.upsample == "mednext":
            raise ConfigError(
                "export: MedNeXt up blocks (model.upsample=mednext) cannot be exported yet; "
                "export a model with upsample=transposed or interpolate"
            )
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x, traceable=True)
        return out[0] if isinstance(out, list) else out


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
