"""Pure shape algebra for convolutions, pooling and transposed convolutions.

Everything here works on one axis at a time with plain integers and imports no
torch, so a plan can be solved before any tensor exists. See DESIGN.md, "The
shape algebra", for the identities used by the decoder solver.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from segkit.errors import ShapeError

IntOrSeq = int | Sequence[int]


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Extent covered by a dilated kernel: ``d·(k−1)+1``."""
    return dilation * (kernel - 1) + 1


def conv_out(
    size: int,
    kernel: int,
    stride: int = 1,
    pad_lo: int = 0,
    pad_hi: int | None = None,
    dilation: int = 1,
) -> int:
    """Output size of a convolution or pooling along one axis (PyTorch's floor rule).

    Args:
        size: input size.
        kernel: kernel size.
        stride: stride.
        pad_lo: padding before the first voxel.
        pad_hi: padding after the last voxel; ``None`` means equal to ``pad_lo``.
        dilation: kernel dilation.

    Returns:
        The output size; 0 or less means the kernel does not fit.
    """
    pad_hi = pad_lo if pad_hi is None else pad_hi
    return (size + pad_lo + pad_hi - effective_kernel(kernel, dilation)) // stride + 1


def conv_transpose_out(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    dilation: int = 1,
) -> int:
    """Output size of a transposed convolution along one axis."""
    return (size - 1) * stride - 2 * padding + effective_kernel(kernel, dilation) + output_padding


def same_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """Padding ``(lo, hi)`` that keeps the size at stride 1 and gives ``ceil(S/s)`` at stride s.

    Odd effective kernels pad symmetrically; even ones put the extra voxel last,
    as PyTorch's ``padding="same"`` does.
    """
    total = effective_kernel(kernel, dilation) - 1
    return total // 2, total - total // 2


def resolve_padding(
    padding: str | int | tuple[int, int], kernel: int, dilation: int = 1
) -> tuple[int, int]:
    """Turn ``"same"``, ``"valid"``, an int or a ``(lo, hi)`` pair into ``(lo, hi)``."""
    if padding == "same":
        return same_padding(kernel, dilation)
    if padding == "valid":
        return 0, 0
    if isinstance(padding, int) and not isinstance(padding, bool):
        return padding, padding
    if isinstance(padding, Sequence) and len(padding) == 2:
        return int(padding[0]), int(padding[1])
    raise ShapeError(f"padding must be 'same', 'valid', an int or (lo, hi); got {padding!r}")


@dataclass(frozen=True)
class Downsample:
    """How one encoder level shrinks an axis: an op with effective kernel ``e``,
    stride ``s`` and total padding ``pad_lo + pad_hi`` (floor rule)."""

    kernel: int
    stride: int
    pad_lo: int = 0
    pad_hi: int = 0
    dilation: int = 1

    @property
    def extent(self) -> int:
        return effective_kernel(self.kernel, self.dilation)

    def out(self, size: int) -> int:
        return conv_out(size, self.kernel, self.stride, self.pad_lo, self.pad_hi, self.dilation)


@dataclass(frozen=True)
class UpFit:
    """A transposed convolution that restores one axis exactly.

    ``padding`` and ``output_padding`` follow from the skip's size on every
    forward pass; ``crop`` (positive: remove voxels at the end, negative: add
    zeros there) is non-zero only where no valid pair exists.
    """

    padding: int
    output_padding: int
    crop: int


def up_padding(down: Downsample, up_kernel: int) -> int:
    """The size-independent padding of the transposed conv that undoes ``down``.

    With ``P = pad_lo + pad_hi`` the identity of DESIGN.md is ``2·p_u = P + u − e``;
    when the right side is odd or negative the nearest non-negative value below
    is taken and :func:`fit_transposed` adjusts per size.
    """
    return max(0, (down.pad_lo + down.pad_hi + up_kernel - down.extent) // 2)


def fit_transposed(skip: int, down: Downsample, up_kernel: int) -> UpFit:
    """Padding, output_padding and crop so that ``up(down(skip)) == skip``.

    The transposed conv gives ``skip + (P + u − e) − 2·p + (op − r)`` with
    ``r = (skip + P − e) mod s``. The padding is the size-independent
    :func:`up_padding`, the same for every size: it fixes where each upsampled voxel
    lands relative to its skip voxel (the decoder's phase), so a network trained on
    one size computes the same thing at another. ``op`` in ``[0, s)`` (it only adds
    voxels at the end) then solves the size: always when ``P + u − e`` is even
    (DESIGN.md's identity, ``op = r``); when it is odd (nnU-Net's 3×3 stride-2 conv
    undone by a 2×2 transposed conv) whenever ``r ≥ 1``, and with an up kernel smaller
    than the stride whenever ``r − (P + u − e) < s``. What is left is cropped at the end
    of the axis (one voxel), or, for an up kernel smaller than the stride, padded there
    with voxels that carry the bias alone, as output_padding's voxels do. One more voxel
    of padding would avoid that crop on some sizes but shift the decoder's grid by a
    voxel on those sizes only.

    Args:
        skip: size of the encoder feature map before downsampling (the skip).
        down: the downsampling op of that level.
        up_kernel: kernel size of the transposed conv (stride equals ``down.stride``).

    Returns:
        The fit; ``conv_transpose_out(down.out(skip), ...) - crop == skip`` always.
    """
    s = down.stride
    total = down.pad_lo + down.pad_hi + up_kernel - down.extent
    remainder = (skip + down.pad_lo + down.pad_hi - down.extent) % s
    padding = up_padding(down, up_kernel)
    op = remainder - (total - 2 * padding)
    if 0 <= op < s:
        return UpFit(padding=padding, output_padding=op, crop=0)
    op = min(max(op, 0), s - 1)  # as close as output_padding gets; the rest is cropped
    out = conv_transpose_out(down.out(skip), up_kernel, s, padding, op)
    return UpFit(padding=padding, output_padding=op, crop=out - skip)


def to_tuple(value: IntOrSeq, ndim: int, *, name: str = "value") -> tuple[int, ...]:
    """Broadcast an int to ``ndim`` axes or check a sequence has ``ndim`` items."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * ndim
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == ndim:
        return tuple(int(v) for v in value)
    raise ShapeError(f"{name} must be an int or a list of {ndim} ints; got {value!r}")


def min_input_size(downs: Sequence[Downsample]) -> int:
    """Smallest size along one axis that every level in ``downs`` can process.

    A level needs at least ``stride`` voxels (a stride larger than the size is
    rejected) and must leave at least the voxels the next level needs:
    ``out(S) >= n`` holds exactly when ``S >= (n − 1)·s + e − P``.
    """
    need = 1
    for down in reversed(downs):
        pad = down.pad_lo + down.pad_hi
        need = max(down.stride, (need - 1) * down.stride + down.extent - pad, 1)
    return need


def receptive_field(layers: Sequence[tuple[str, int, int]]) -> int:
    """Receptive field along one axis of a chain of layers.

    Args:
        layers: ``(kind, extent, stride)`` with kind ``"down"`` (conv or pool with
            effective kernel ``extent``) or ``"up"`` (transposed conv with kernel
            ``extent``, or interpolation with ``extent = 2·stride``).

    Returns:
        Number of input voxels one output voxel can see.
    """
    rf, jump = 1.0, 1.0
    for kind, extent, stride in layers:
        if kind == "down":
            rf += (extent - 1) * jump
            jump *= stride
        else:
            rf += (math.ceil(extent / stride) - 1) * jump
            jump /= stride
    return int(round(rf))
