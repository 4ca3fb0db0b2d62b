import pytest
import torch
import torch.nn.functional as F

from segkit.training.losses import DeepSupervisionLoss, DiceCELoss


def _onehot_logits(target: torch.Tensor, k: int, scale: float = 20.0) -> torch.Tensor:
    return F.one_hot(target[:, 0], k).movedim(-1, 1).float() * scale


def test_perfect_prediction_has_near_zero_loss_and_wrong_has_high():
    t = torch.randint(0, 3, (2, 1, 9, 11, 7))
    loss = DiceCELoss()
    assert loss(_onehot_logits(t, 3), t).item() < 1e-3
    wrong = _onehot_logits((t + 1) % 3, 3)
    assert loss(wrong, t).item() > 1.9


def test_dice_only_matches_hand_computation():
    t = torch.tensor([[[0, 1, 1, 2]]])
    logits = _onehot_logits(torch.tensor([[[0, 1, 2, 2]]]), 3, scale=100.0)
    loss = DiceCELoss(ce_weight=0.0, smooth=0.0)
    # class 1: 2·1/(1+2) = 2/3; class 2: 2·1/(2+1) = 2/3 → loss 1/3
    assert loss(logits, t).item() == pytest.approx(1 / 3, abs=1e-4)


def test_deep_supervision_resizes_targets_to_each_odd_head():
    t = torch.randint(0, 2, (1, 1, 29, 31))
    outs = [torch.zeros(1, 2, 29, 31), torch.zeros(1, 2, 15, 16), torch.zeros(1, 2, 8, 8)]
    ds = DeepSupervisionLoss(DiceCELoss(dice_weight=0.0), weight_decay=0.5)
    # uniform logits: CE = log 2 at every head, whatever the weights
    assert ds(outs, t).item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    outs[2] = _onehot_logits(F.interpolate(t.float(), size=(8, 8)).long(), 2)
    # the smallest head is now perfect: its weight (1/7 of 4+2+1) drops out
    assert ds(outs, t).item() == pytest.approx(6 / 7 * 0.6931, rel=1e-3)
