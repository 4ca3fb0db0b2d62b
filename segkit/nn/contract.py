"""The block contract, checked before anything runs.

A block ``Block(in_channels, out_channels, stride, context, **kwargs)`` must map
``(N, in_channels, *S)`` to ``(N, out_channels, *ceil(S / stride))`` for every ``S``
(:mod:`segkit.nn.blocks`). segkit's own blocks keep it by construction; a user block
(marked ``segkit_expect`` when built) is run here on a few sizes per axis, and again
during every plan's trace (:mod:`segkit.nn.trace`), and a block that breaks it is named
with its stage, the sizes it received and the sizes the network needs.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from segkit.errors import ShapeError
from segkit.nn.stages import DecoderStage, EncoderStage
from segkit.spec import UNetSpec

Size = tuple[int, ...]


def shape_of(value: Any) -> torch.Size | None:
    """The shape of a module's output; of its first tensor for a list (deep supervision)."""
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, list | tuple) and value and isinstance(value[0], torch.Tensor):
        return value[0].shape
    return None


def check_block(block: nn.Module, in_shape: torch.Size, out: Any) -> None:
    """A user block must give ``out_channels`` × ``ceil(S/stride)``; say so if it does not."""
    _, want_c, stride, where = block.segkit_expect
    want = tuple(-(-n // s) for n, s in zip(in_shape[2:], stride))
    shape = shape_of(out)
    got = None if shape is None else (int(shape[1]), tuple(int(v) for v in shape[2:]))
    if got == (want_c, want):
        return
    x = "×".join(map(str, in_shape[2:]))
    got_s = "not a tensor" if got is None else f"{'×'.join(map(str, got[1]))} × {got[0]} ch"
    raise ShapeError(
        f"{where}, stride {'×'.join(map(str, stride))}: input {x} × {in_shape[1]} ch gave "
        f"{got_s}; the plan needs {'×'.join(map(str, want))} × {want_c} ch (ceil(size/stride) "
        "per axis, what a 'same'-padded strided conv gives, and out_channels). Fix: pad the "
        "block's convs by (kernel-1)//2 (context.conv(...) does) and end with out_channels"
    )


@functools.lru_cache(maxsize=32)
def verify_blocks(spec: UNetSpec) -> None:
    """Check every user block of ``spec`` against the contract before anything runs.

    Each distinct (stage, stride, width) a user block is built with runs on a few
    sizes per axis (``s+1``, ``2s+1``, ``3s+2``, ``4s+3``: every remainder, and at
    least two output voxels) on the meta device (on a tiny CPU tensor if the block
    cannot run on meta).

    Raises:
        ShapeError: naming the block, the stage, the sizes received and needed.
    """
    with torch.device("meta"):
        stages = [
            EncoderStage(spec, i, spec.in_channels if i == 0 else spec.channels[i - 1])
            for i in range(spec.depth)
        ]
        stages += [DecoderStage(spec, i) for i in range(spec.depth - 1)]
    seen = set()
    for stage in stages:
        for block in stage.blocks:
            if not hasattr(block, "segkit_expect"):
                continue
            cin, _, stride, where = block.segkit_expect
            if (where, stride, cin) in seen:
                continue
            seen.add((where, stride, cin))
            block.eval()  # shapes only; batch statistics of one sample are not the point
            for k in range(4):
                # every remainder mod s, and at least two output voxels (norms need them)
                size = tuple((s + 1, 2 * s + 1, 3 * s + 2, 4 * s + 3)[k] for s in stride)
                _run_block(block, cin, size)


def _run_block(block: nn.Module, cin: int, size: Size) -> None:
    x = torch.empty((1, cin, *size), device="meta")
    try:
        out = block(x)
    except NotImplementedError:
        block = _cpu_copy(block)
        x = torch.zeros((1, cin, *size))
        try:
            out = block(x)
        except Exception as exc:
            raise _failed(block, size, exc) from exc
    except Exception as exc:
        raise _failed(block, size, exc) from exc
    check_block(block, x.shape, out)


def _cpu_copy(block: nn.Module) -> nn.Module:
    return block.to_empty(device="cpu")


def _failed(block: nn.Module, size: Size, exc: Exception) -> ShapeError:
    return ShapeError(
        f"{block.segkit_expect[3]}: the block failed on an input of {'×'.join(map(str, size))} "
        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). A "
        "block must accept every size and give ceil(size/stride) per axis"
    )


__all__ = ["check_block", "shape_of", "verify_blocks"]
