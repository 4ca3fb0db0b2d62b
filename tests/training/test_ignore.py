"""The ignore label in the loss and in validation: ignored voxels count for nothing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segkit.inference.metrics.dice import case_dice
from segkit.training.losses import DeepSupervisionLoss, DiceCELoss, build_loss
from segkit.training.module import SegModule
from tests.inference.engine_logits import engine_logits

K = 3  # classes 0, 1, 2
IGNORE = K  # nnU-Net v2: one above the last class


def _batch(seed: int = 0, shape=(2, 1, 9, 8, 7), ignored: float = 0.4):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, K, shape, generator=g)
    target[torch.rand(shape, generator=g) < ignored] = IGNORE
    logits = torch.randn((shape[0], K, *shape[2:]), generator=g, requires_grad=True)
    return logits, target


@pytest.mark.parametrize(("dice_weight", "ce_weight"), [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0)])
def test_ignored_voxels_get_exactly_zero_gradient(dice_weight, ce_weight):
    logits, target = _batch()
    loss = DiceCELoss(dice_weight=dice_weight, ce_weight=ce_weight, ignore_index=IGNORE)
    (grad,) = torch.autograd.grad(loss(logits, target), logits)
    ignored = (target[:, 0] == IGNORE)[:, None].expand_as(grad)
    assert ignored.any()
    assert torch.count_nonzero(grad[ignored]) == 0
    assert (grad[~ignored].abs() > 0).float().mean() > 0.99  # annotated voxels do learn


def test_masked_cross_entropy_equals_torch_ignore_index():
    logits, target = _batch(seed=1)
    ours = DiceCELoss(dice_weight=0.0, ignore_index=IGNORE)(logits, target)
    reference = F.cross_entropy(logits, target[:, 0], ignore_index=IGNORE)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("batch_dice", [True, False])
def test_masked_soft_dice_equals_a_dice_over_annotated_voxels_only(batch_dice):
    logits, target = _batch(seed=2)
    ours = DiceCELoss(ce_weight=0.0, batch_dice=batch_dice, smooth=1e-5, ignore_index=IGNORE)
    # reference: numpy, voxel lists of the annotated voxels only (no mask arithmetic)
    probs = logits.detach().softmax(1).numpy()
    t = target[:, 0].numpy()
    groups = [list(range(t.shape[0]))] if batch_dice else [[n] for n in range(t.shape[0])]
    dices = []
    for group in groups:
        for c in range(1, K):
            p = np.concatenate([probs[n, c][t[n] != IGNORE] for n in group])
            g = np.concatenate([(t[n] == c)[t[n] != IGNORE] for n in group]).astype(float)
            dices.append((2 * (p * g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5))
    assert ours(logits, target).item() == pytest.approx(1 - np.mean(dices), rel=1e-5)


def test_a_fully_ignored_batch_has_loss_zero_and_zero_gradient():
    logits = torch.randn(2, K, 6, 5, 4, requires_grad=True)
    target = torch.full((2, 1, 6, 5, 4), IGNORE)
    heads = [logits, logits[:, :, ::2, ::2, ::2]]
    for batch_dice in (True, False):
        loss = DeepSupervisionLoss(DiceCELoss(batch_dice=batch_dice, ignore_index=IGNORE))
        value = loss(heads, target)
        (grad,) = torch.autograd.grad(value, logits)
        assert value.item() == 0.0
        assert torch.count_nonzero(grad) == 0 and not grad.isnan().any()


def test_deep_supervision_resizes_the_ignore_mask_with_the_targets():
    _, target = _batch(seed=3, shape=(1, 1, 29, 31))
    outs = [torch.randn(1, K, 29, 31), torch.randn(1, K, 15, 16), torch.randn(1, K, 8, 8)]
    loss = build_loss({"dice_weight": 0.0, "ds_weight_decay": 0.5}, ignore_label=IGNORE)

    # reference: nearest resizing by index arithmetic (PyTorch's "nearest": floor(i·in/out)),
    # scored by torch's own ignore_index
    def nearest(t, size):
        rows = (torch.arange(size[0]) * t.shape[-2] // size[0]).clamp_max(t.shape[-2] - 1)
        cols = (torch.arange(size[1]) * t.shape[-1] // size[1]).clamp_max(t.shape[-1] - 1)
        return t[..., rows[:, None], cols[None, :]]

    weights = torch.tensor([1.0, 0.5, 0.25]) / 1.75
    expected = sum(
        w * F.cross_entropy(o, nearest(target, o.shape[2:])[:, 0], ignore_index=IGNORE)
        for w, o in zip(weights, outs)
    )
    assert loss(outs, target).item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------ validation


def _dice_on_annotated(pred: np.ndarray, ref: np.ndarray) -> list[float]:
    keep = ref != IGNORE
    p, r = pred[keep], ref[keep]
    out = []
    for c in range(1, K):
        total = (p == c).sum() + (r == c).sum()
        out.append(2 * ((p == c) & (r == c)).sum() / total if total else float("nan"))
    return out


def test_case_dice_leaves_the_ignored_voxels_out():
    g = torch.Generator().manual_seed(4)
    ref = torch.randint(0, K + 1, (12, 11, 10), generator=g)
    pred = torch.randint(0, K, (12, 11, 10), generator=g)
    ours = case_dice(pred, ref, K, ignore_label=IGNORE).numpy()
    np.testing.assert_allclose(ours, _dice_on_annotated(pred.numpy(), ref.numpy()), rtol=1e-12)


def _module() -> SegModule:
    torch.manual_seed(0)
    return SegModule(
        model={
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": K,
            "depth": 2,
            "channels": 4,
            "deep_supervision": True,
        },
        optim={"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.01}},
        loss={"dice_weight": 1.0, "ce_weight": 1.0},
        patch_size=[8, 8, 8],
        val_mode="whole",
        ignore_label=IGNORE,
    )


def test_validation_dice_and_loss_skip_the_ignored_voxels():
    module = _module().eval()
    g = torch.Generator().manual_seed(5)
    image = torch.randn(1, 1, 12, 10, 8, generator=g)
    label = torch.randint(0, K, (1, 1, 12, 10, 8), generator=g)
    label[..., 3:] = IGNORE  # only slices 0..2 annotated
    logged = {}
    module.log = lambda name, value, **kw: logged.setdefault(name, value)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.validation_step({"image": image, "label": label, "case": [None]}, 0)
        logits = engine_logits(module.net, image, module.hparams.patch_size, mode="whole")
    pred = logits.argmax(1)
    assert pred.max() < IGNORE  # one output per real class: k is never predicted
    expected = _dice_on_annotated(pred[0].numpy(), label[0, 0].numpy())
    np.testing.assert_allclose(module._val_dice[0][0].numpy(), expected, rtol=1e-12)
    # the validation loss is the loss of the annotated slices alone
    # the validation loss (summed over the engine's tiles) is the loss of the annotated
    # slices alone, computed here on the whole logits
    alone = module.loss_fn.loss(logits[..., :3], label[..., :3])
    assert logged["val/loss"].item() == pytest.approx(alone.item(), rel=1e-5)
