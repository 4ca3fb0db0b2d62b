"""User blocks for the tests (named by ``_target_: tests.core.custom_blocks.<Name>``)."""

from __future__ import annotations

import torch
from torch import nn

from segkit.nn.blocks import BlockContext


class SEBlock(nn.Module):
    """conv → norm → act (carrying the stride), then squeeze-and-excitation: the excitation
    weights are a mean over the whole input, so a whole volume answers unlike its windows.
    It declares no ``depends_on_extent``, as a user's block usually does not."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: tuple[int, ...],
        context: BlockContext,
        reduction: int = 4,
    ) -> None:
        super().__init__()
        conv1x1 = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[context.spatial_dims]
        hidden = max(1, out_channels // reduction)
        self.conv = context.conv(in_channels, out_channels, stride=stride)
        self.squeeze = conv1x1(out_channels, hidden, 1)
        self.excite = conv1x1(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        w = y.mean(dim=tuple(range(2, y.dim())), keepdim=True)
        return y * torch.sigmoid(self.excite(torch.relu(self.squeeze(w))))


class LocalBlock(nn.Module):
    """conv → norm → act (carrying the stride), declared local: its output at a voxel reads
    only the conv's neighbourhood, so ``auto`` may run it on a whole volume."""

    depends_on_extent = False

    def __init__(
        self, in_channels: int, out_channels: int, stride: tuple[int, ...], context: BlockContext
    ) -> None:
        super().__init__()
        self.conv = context.conv(in_channels, out_channels, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FloorBlock(nn.Module):
    """Breaks the contract: an unpadded strided conv gives floor, not ceil, sizes."""

    def __init__(self, in_channels, out_channels, stride, context) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[context.spatial_dims]
        self.conv = conv(in_channels, out_channels, stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class WrongWidthBlock(nn.Module):
    """Breaks the contract: ignores out_channels."""

    def __init__(self, in_channels, out_channels, stride, context) -> None:
        super().__init__()
        self.conv = context.conv(in_channels, in_channels + 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class NoContextBlock(nn.Module):
    """Breaks the contract: a constructor without ``context``."""

    def __init__(self, in_channels, out_channels, stride) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


not_a_class = print
