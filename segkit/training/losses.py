"""Dice + cross-entropy, and deep supervision over heads of any size.

Region datasets (nnU-Net v2 region training, BraTS) use `RegionDiceBCELoss` instead: one
sigmoid output per region, per-region binary cross-entropy plus soft Dice, with the region
targets made from the label map inside the loss (so deep supervision resizes label maps
exactly as for classes).

An ignore label (dataset.json ``"ignore": k``) marks unannotated voxels: they are left out
of every term, cross-entropy and both the numerator and the denominator of the soft Dice,
so their logits get exactly zero gradient. A patch with no annotated voxel has loss 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.data.regions import Region, region_masks


class DiceCELoss(nn.Module):
    """Soft Dice over foreground classes plus cross-entropy (nnU-Net's default loss).

    Args:
        dice_weight: weight of the Dice term.
        ce_weight: weight of the cross-entropy term.
        batch_dice: pool the Dice sums over the batch (one Dice per class) rather
            than per sample; steadier with small patches.
        include_background: include class 0 in the Dice term.
        smooth: added to numerator and denominator.
        ignore_index: label value of unannotated voxels (not a class; None: none).
    """

    def __init__(
        self,
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        batch_dice: bool = True,
        include_background: bool = False,
        smooth: float = 1e-5,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.batch_dice, self.include_background, self.smooth = (
            batch_dice,
            include_background,
            smooth,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (N, K, *S); ``target`` (N, 1, *S) or (N, *S) integer labels."""
        return self.from_sums(self.sums(logits, target))

    def sums(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sample, the sums the loss is made of (additive over voxels, so a volume's loss
        is :meth:`from_sums` of its tiles' sums added up): cross-entropy and annotated voxels,
        and per class the soft Dice intersection and denominator."""
        if target.dim() == logits.dim():
            target = target[:, 0]
        target = target.long()
        logits = logits.float()
        space = tuple(range(1, target.dim()))
        mask = None
        if self.ignore_index is not None:
            mask = target != self.ignore_index
            target = target.masked_fill(~mask, 0)  # any class: its terms are masked out
        out: dict[str, torch.Tensor] = {}
        if self.ce_weight:
            ce = F.cross_entropy(logits, target, reduction="none")
            if mask is not None:
                ce = ce * mask
            out["ce"] = ce.sum(space)
            out["count"] = (
                mask.sum(space).to(ce.dtype)
                if mask is not None
                else torch.full_like(out["ce"], target[0].numel())
            )
        if self.dice_weight:
            probs = logits.softmax(1)
            onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
            if mask is not None:
                keep = mask[:, None].to(probs.dtype)
                probs, onehot = probs * keep, onehot * keep
            start = 0 if self.include_background else 1
            probs, onehot = probs[:, start:], onehot[:, start:]
            dims = tuple(range(2, logits.dim()))
            out["inter"] = (probs * onehot).sum(dims)
            out["denom"] = probs.sum(dims) + onehot.sum(dims)
        return out

    def from_sums(self, sums: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of :meth:`sums` (added over tiles): mean cross-entropy over annotated
        voxels (0 where none is) plus 1 − mean soft Dice."""
        return _combine(self, sums, sums.get("count"))


def _combine(loss: nn.Module, sums: dict[str, torch.Tensor], count: torch.Tensor | None):
    """``ce_weight · Σce / Σcount + dice_weight · (1 − mean Dice)`` of per-sample sums."""
    ref = next(iter(sums.values()))
    total = ref.new_zeros(())
    if loss.ce_weight:
        total = total + loss.ce_weight * sums["ce"].sum() / count.sum().clamp_min(1)
    if loss.dice_weight:
        inter, denom = sums["inter"], sums["denom"]
        if loss.batch_dice:
            inter, denom = inter.sum(0), denom.sum(0)
        dice = (2 * inter + loss.smooth) / (denom + loss.smooth).clamp_min(1e-8)
        total = total + loss.dice_weight * (1 - dice.mean())
    return total


class RegionDiceBCELoss(nn.Module):
    """Per-region sigmoid BCE plus soft Dice over every region channel (nnU-Net's
    ``DC_and_BCE_loss`` for region training).

    Args:
        regions: the regions in output-channel order.
        dice_weight: weight of the Dice term.
        ce_weight: weight of the binary cross-entropy (mean over voxels and regions).
        batch_dice: pool the Dice sums over the batch (one Dice per region).
        smooth: added to numerator and denominator of the Dice.
    """

    def __init__(
        self,
        *,
        regions: Sequence[Region],
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        batch_dice: bool = True,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.regions = tuple(regions)
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.batch_dice, self.smooth = batch_dice, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (N, R, *S); ``target`` (N, 1, *S) or (N, *S) integer label map."""
        return self.from_sums(self.sums(logits, target))

    def sums(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sample, the additive sums of the loss: binary cross-entropy over voxels and
        regions, and per region the soft Dice intersection and denominator."""
        if target.dim() == logits.dim():
            target = target[:, 0]
        if logits.shape[1] != len(self.regions):
            raise ValueError(
                f"region loss: {logits.shape[1]} output channels for {len(self.regions)} regions"
            )
        logits = logits.float()
        masks = region_masks(target, self.regions).movedim(0, 1).to(logits.dtype)
        dims = tuple(range(2, logits.dim()))
        out: dict[str, torch.Tensor] = {}
        if self.ce_weight:
            bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
            out["ce"] = bce.sum((1, *dims))
            out["count"] = torch.full_like(out["ce"], masks[0].numel())
        if self.dice_weight:
            probs = torch.sigmoid(logits)
            out["inter"] = (probs * masks).sum(dims)
            out["denom"] = probs.sum(dims) + masks.sum(dims)
        return out

    def from_sums(self, sums: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of :meth:`sums` (added over tiles): mean BCE over voxels and regions
        plus 1 − mean soft Dice."""
        return _combine(self, sums, sums.get("count"))


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over deep-supervision heads, largest first.

    Each head's target is the label resized (nearest) to that head's exact
    size, never assuming a power-of-two factor; the ignore label is a label value,
    so the ignore mask is resized with it. Weights halve per level
    (``weight_decay``) and are normalised to sum to one.
    """

    def __init__(self, loss: nn.Module, *, weight_decay: float = 0.5) -> None:
        super().__init__()
        self.loss, self.weight_decay = loss, weight_decay

    def forward(
        self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = [self.weight_decay**i for i in range(len(outputs))]
        total = sum(weights)
        loss = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs):
            t = target
            if tuple(out.shape[2:]) != tuple(target.shape[2:]):
                t = F.interpolate(target.float(), size=out.shape[2:], mode="nearest").long()
            loss = loss + (w / total) * self.loss(out, t)
        return loss


def build_loss(
    cfg: dict,
    *,
    ignore_label: int | None = None,
    regions: Sequence[Region] | None = None,
) -> DeepSupervisionLoss:
    """The loss from the ``loss`` config group; ``ignore_label`` and ``regions`` from
    dataset.json (with regions: `RegionDiceBCELoss` with the same weights, batch Dice and
    smoothing; every region channel is foreground, so ``include_background`` has no use)."""
    cfg = dict(cfg)
    decay = cfg.pop("ds_weight_decay", 0.5)
    if regions:
        cfg.pop("include_background", None)
        return DeepSupervisionLoss(RegionDiceBCELoss(regions=regions, **cfg), weight_decay=decay)
    return DeepSupervisionLoss(DiceCELoss(**cfg, ignore_index=ignore_label), weight_decay=decay)
