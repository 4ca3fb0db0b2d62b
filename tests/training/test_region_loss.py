"""The region loss (per-region sigmoid BCE + soft Dice) against MONAI and closed forms."""

from __future__ import annotations

import pytest
import torch

from segkit.data.regions import Region
from segkit.training.losses import DeepSupervisionLoss, RegionDiceBCELoss, build_loss

REGIONS = (Region("whole", (1, 2, 3)), Region("core", (2, 3)), Region("enh", (3,)))


def _case(seed: int = 0, shape=(2, 3, 6, 5, 4)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 2
    label = torch.randint(0, 4, (shape[0], 1, *shape[2:]), generator=g)
    # the region targets written independently: [v in region] per channel
    target = torch.stack([torch.isin(label[:, 0], torch.tensor(r.labels)) for r in REGIONS], 1)
    return logits, label, target.float()


@pytest.mark.parametrize("batch_dice", [True, False])
def test_region_loss_is_monai_sigmoid_dice_plus_bce(batch_dice):
    from monai.losses import DiceLoss

    logits, label, target = _case()
    smooth = 1e-5
    ours = RegionDiceBCELoss(regions=REGIONS, batch_dice=batch_dice, smooth=smooth)
    dice = DiceLoss(
        sigmoid=True, include_background=True, batch=batch_dice, smooth_nr=smooth, smooth_dr=smooth
    )(logits, target)
    p = torch.sigmoid(logits.double())
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()  # the closed form
    assert ours(logits, label).item() == pytest.approx((dice + bce).item(), abs=1e-6)
    only_dice = RegionDiceBCELoss(regions=REGIONS, ce_weight=0, batch_dice=batch_dice)
    assert only_dice(logits, label).item() == pytest.approx(dice.item(), abs=1e-6)
    # the label map's channel dimension is optional
    assert ours(logits, label[:, 0]).item() == pytest.approx(ours(logits, label).item())


def test_perfect_logits_give_zero_loss_and_wrong_channels_fail():
    _, label, target = _case(1)
    loss = RegionDiceBCELoss(regions=REGIONS, smooth=0.0)
    assert loss((target * 2 - 1) * 50, label).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="4 output channels for 3 regions"):
        loss(torch.zeros(2, 4, 6, 5, 4), label)


def test_build_loss_with_regions_keeps_the_loss_config_and_deep_supervision():
    cfg = {
        "dice_weight": 1.0,
        "ce_weight": 0.5,
        "batch_dice": True,
        "include_background": False,
        "smooth": 1e-5,
        "ds_weight_decay": 0.5,
    }
    ds = build_loss(cfg, regions=REGIONS)
    assert isinstance(ds, DeepSupervisionLoss) and isinstance(ds.loss, RegionDiceBCELoss)
    assert (ds.loss.ce_weight, ds.loss.batch_dice) == (0.5, True)
    logits, label, _ = _case(2, shape=(2, 3, 8, 6, 4))
    small = torch.randn(2, 3, 4, 3, 2)
    # the low-resolution head's target is the label map resized (nearest), then regions
    low = torch.nn.functional.interpolate(label.float(), size=(4, 3, 2), mode="nearest").long()
    expected = (2 / 3) * ds.loss(logits, label) + (1 / 3) * ds.loss(small, low)
    assert ds([logits, small], label).item() == pytest.approx(expected.item(), abs=1e-6)
