"""One Dice on confusion counts (`segkit.inference.metrics.dice`), for classes and regions,
checked against MONAI's ``compute_dice`` on one-hot masks and region masks (MONAI's own BraTS
conversion), and against counts made by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

from segkit.data.regions import Region
from segkit.inference.metrics import dice as dice_module
from segkit.inference.metrics.dice import case_dice, case_region_dice, confusion, mean_dice

K = 5
BRATS = [Region("whole", (1, 2, 3)), Region("core", (2, 3)), Region("enh", (3,))]


def _maps(seed: int, shape=(13, 11, 9), k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """A reference and a prediction that agrees with it on most voxels; class k-1 is in
    the reference only, so one class scores 0."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, k - 1, shape)
    ref[rng.random(shape) < 0.05] = k - 1
    pred = np.where(rng.random(shape) < 0.7, ref, rng.integers(0, k - 1, shape))
    pred[pred == k - 1] = 0
    return pred, ref


def _monai(masks_pred: np.ndarray, masks_ref: np.ndarray) -> np.ndarray:
    """MONAI's Dice of (C, *S) masks; 1 where both are empty (``ignore_empty=False``)."""
    p, r = (
        torch.from_numpy(np.ascontiguousarray(m)[None]).float() for m in (masks_pred, masks_ref)
    )
    return compute_dice(p, r, include_background=True, ignore_empty=False)[0].double().numpy()


def _one_hot(label: np.ndarray, k: int) -> np.ndarray:
    return np.stack([label == c for c in range(1, k)])


def _same(ours: np.ndarray, theirs: np.ndarray, empty: np.ndarray) -> None:
    """Ours is NaN exactly where both masks are empty (MONAI: 1 there), else MONAI's."""
    ours = np.asarray(ours, dtype=np.float64)
    assert np.array_equal(np.isnan(ours), empty)
    np.testing.assert_array_equal(theirs[empty], 1.0)
    np.testing.assert_allclose(ours[~empty], theirs[~empty], rtol=1e-6)


def test_class_dice_is_monais():
    for seed in range(3):
        pred, ref = _maps(seed)
        ours = case_dice(torch.from_numpy(pred), torch.from_numpy(ref), K + 1).numpy()
        masks = _one_hot(pred, K + 1), _one_hot(ref, K + 1)
        empty = ~(masks[0].any(axis=(1, 2, 3)) | masks[1].any(axis=(1, 2, 3)))
        assert empty[-1] and not empty[:-1].any()  # class K in neither map: NaN
        assert ours[K - 2] == 0.0  # class K-1 in the reference only
        _same(ours, _monai(*masks), empty)


def test_ignored_voxels_count_for_nothing():
    pred, ref = _maps(3)
    ignore = K
    ref[:, :, 5:] = ignore  # unannotated slab
    ours = case_dice(pred, ref, K, ignore_label=ignore).numpy()
    keep = ref != ignore
    p, r = pred[keep][None, None], ref[keep][None, None]  # the annotated voxels, as a 1D image
    masks = _one_hot(p, K)[:, 0], _one_hot(r, K)[:, 0]
    empty = ~(masks[0].any(axis=(1, 2)) | masks[1].any(axis=(1, 2)))
    _same(ours, _monai(*masks), empty)
    assert confusion(pred, ref, K, ignore_label=ignore).sum() == keep.sum()


def test_region_dice_is_monais_on_region_masks():
    # BraTS 2018-2022 values (1 necrosis, 2 oedema, 4 enhancing) and MONAI's TC, WT, ET
    regions = [Region("TC", (1, 4)), Region("WT", (1, 2, 4)), Region("ET", (4,))]
    rng = np.random.default_rng(5)
    ref = rng.choice([0, 1, 2, 4], size=(12, 10, 8), p=[0.6, 0.1, 0.2, 0.1]).astype(np.uint8)
    pred = np.where(rng.random(ref.shape) < 0.8, ref, rng.choice([0, 1, 2, 4], size=ref.shape))
    pred = pred.astype(np.uint8)
    convert = ConvertToMultiChannelBasedOnBratsClasses(et_label=4)
    theirs = _monai(convert(pred), convert(ref))
    ours = case_region_dice(pred, ref, regions)
    _same(np.array(ours), theirs, np.zeros(3, bool))
    # a region in neither map is NaN, in one only 0
    empty = case_region_dice(np.zeros(4, np.uint8), np.array([0, 1, 1, 0]), BRATS)
    assert empty[0] == 0 and math.isnan(empty[1]) and math.isnan(empty[2])


def test_region_dice_by_hand():
    ref = np.array([0, 1, 1, 2, 2, 3, 3, 3, 0, 0])
    pred = np.array([1, 1, 2, 2, 3, 3, 0, 3, 0, 0])
    # whole: P = {0..5, 7} (7), R = {1..7} (7), P∩R = {1,2,3,4,5,7} (6) → 12/14
    # core: P = {2,3,4,5,7} (5), R = {3..7} (5), P∩R = {3,4,5,7} (4) → 8/10
    # enh:  P = {4,5,7} (3), R = {5,6,7} (3), P∩R = {5,7} (2) → 4/6
    expected = [12 / 14, 8 / 10, 4 / 6]
    assert case_region_dice(pred, ref, BRATS) == expected
    assert case_region_dice(torch.from_numpy(pred), torch.from_numpy(ref), BRATS) == expected


def _by_hand(pred, ref, ignore=None, k=K) -> np.ndarray:
    pred, ref = np.asarray(pred).ravel(), np.asarray(ref).ravel()
    keep = ref != ignore
    hand = np.zeros((k, k), np.int64)
    np.add.at(hand, (pred[keep], ref[keep]), 1)
    return hand


def test_confusion_counts_by_hand_in_any_chunking(monkeypatch):
    pred, ref = _maps(7, shape=(9, 8, 7))
    sparse = np.where(np.arange(ref.size).reshape(ref.shape) % 3 == 0, K, ref)  # ignore: K
    inputs = [
        (pred, ref, None),
        (pred.astype(np.uint8), ref.astype(np.uint16), None),  # uint16: torch cannot reduce it
        (torch.from_numpy(pred).to(torch.int8), torch.from_numpy(ref).to(torch.int32), None),
        (pred[:, ::2], ref[:, ::2], None),  # not contiguous
        (pred, sparse, K),
        (torch.from_numpy(pred), torch.from_numpy(sparse).to(torch.uint8), K),
    ]
    for chunk in (1 << 22, 37, 1):
        monkeypatch.setattr(dice_module, "_CHUNK", chunk)
        for p, r, ignore in inputs:
            counts = confusion(p, r, K, ignore_label=ignore)
            assert counts.dtype == torch.int64
            np.testing.assert_array_equal(counts.numpy(), _by_hand(p, r, ignore))
    # 40 classes: 1600 cells, more than a uint8 key holds
    monkeypatch.setattr(dice_module, "_CHUNK", 1 << 22)
    many, other = _maps(9, k=40)
    np.testing.assert_array_equal(confusion(many, other, 40), _by_hand(many, other, k=40))


def test_numpy_and_torch_give_the_same_bits():
    pred, ref = _maps(8)
    a = case_dice(pred.astype(np.uint8), ref.astype(np.uint8), K)
    b = case_dice(torch.from_numpy(pred), torch.from_numpy(ref), K)
    assert torch.equal(a, b)
    assert case_region_dice(pred, ref, BRATS) == case_region_dice(
        torch.from_numpy(pred), torch.from_numpy(ref), BRATS
    )


def test_values_outside_the_table_are_refused():
    ref = np.array([0, 1, 2, 5])
    with pytest.raises(ValueError, match=r"label values 0..5 found, but num_values=3"):
        confusion(ref, ref, 3)
    # K itself would land in another cell (pred 0, ref 3 → [1, 0]) if it were let through
    with pytest.raises(ValueError, match=r"label values 0..3 found, but num_values=3"):
        confusion(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match=r"prediction \(3,\) and reference \(4,\) differ"):
        case_dice(ref[:3], ref, 6)
    with pytest.raises(ValueError, match=r"label values -1..0 found"):
        confusion(np.array([0, -1]), np.array([0, 0]), 3)
    # the ignore label may lie outside the table: its voxels are not counted
    assert confusion(ref, ref, 3, ignore_label=5).sum() == 3


def test_mean_leaves_absent_classes_out():
    per_case = torch.tensor([[1.0, math.nan], [0.5, math.nan], [math.nan, math.nan]])
    per_class, mean = mean_dice(per_case)
    assert per_class[0].item() == 0.75 and math.isnan(per_class[1].item())
    assert mean == 0.75
    assert math.isnan(mean_dice(torch.full((2, 3), math.nan))[1])
