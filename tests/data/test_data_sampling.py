"""Patch sampling: any patch size, padding, foreground oversampling, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_msd
from torch.utils.data import DataLoader

from segkit.data import EpochSampler, PatchDataset, preprocess_dataset


@pytest.fixture
def sparse_fg(tmp_path):
    """One 41x37x19 case: a single class-1 voxel and a 2-voxel class-2 spot."""
    rng = np.random.default_rng(0)
    image = rng.normal(10, 1, size=(41, 37, 19))
    label = np.zeros(image.shape)
    label[30, 5, 15] = 1
    label[3, 30, 2:4] = 2
    root = write_msd(tmp_path / "sparse", [(image, label)], num_classes=3)
    return preprocess_dataset(root, num_workers=0, progress=False)


def _dataset(prep, patch, **kw):
    return PatchDataset(
        cases_dir=prep.cases_dir, case_ids=prep.case_ids, patch_size=patch, num_samples=64, **kw
    )


@pytest.mark.parametrize("patch", [(7, 5, 3), (13, 11, 17), (8, 6), (1, 1, 1)])
def test_patch_shapes_any_size(sparse_fg, patch):
    ds = _dataset(sparse_fg, patch)
    item = ds[3]
    assert item["image"].shape == (1, *patch) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, *patch) and item["label"].dtype == torch.uint8
    assert set(item["label"].unique().tolist()) <= {0, 1, 2}


def test_case_smaller_than_patch_is_padded(make_msd):
    prep = preprocess_dataset(make_msd(shapes=((9, 11, 7),)), num_workers=0, progress=False)
    label = np.load(prep.cases_dir / "case_00_label.npy")
    patch = (17, 13, 11)
    ds = _dataset(prep, patch, oversample_foreground=0.0)
    for index in range(5):
        image, lab, info = ds.sample_patch(index)
        assert lab.shape == patch
        lower = np.array(info["lower"])
        assert (lower <= 0).all() and (lower + patch >= label.shape).all()
        # The whole case sits inside the patch; the rest is zero padding.
        inner = tuple(slice(-a, -a + n) for a, n in zip(lower, label.shape))
        np.testing.assert_array_equal(lab[inner], label)
        assert lab.sum() == label.sum()
        assert np.count_nonzero(image) == np.count_nonzero(image[(slice(None), *inner)])


def test_foreground_oversampling_ratio(sparse_fg):
    ds = _dataset(sparse_fg, (8, 8, 4), oversample_foreground=0.33)
    n = 900
    forced = with_fg = 0
    classes = {1: 0, 2: 0}
    for i in range(n):
        _, lab, info = ds.sample_patch(i)
        has_fg = bool(lab.any())
        with_fg += has_fg
        if info["forced_foreground"]:
            forced += 1
            assert has_fg  # a forced patch always contains its foreground voxel
            for c in classes:
                classes[c] += bool((lab == c).any())
    assert abs(forced / n - 0.33) < 0.05
    # Random patches hit the 3 foreground voxels rarely (< ~4%).
    assert 0.30 < with_fg / n < 0.40
    # Forced patches pick a random class among those present (about half each).
    assert 0.35 < classes[1] / forced < 0.65 and 0.35 < classes[2] / forced < 0.65


def test_no_oversampling_rarely_hits_foreground(sparse_fg):
    ds = _dataset(sparse_fg, (8, 8, 4), oversample_foreground=0.0)
    hits = sum(bool(ds.sample_patch(i)[1].any()) for i in range(300))
    assert hits / 300 < 0.08


def test_reproducible_across_worker_counts(sparse_fg):
    ds = _dataset(sparse_fg, (9, 7, 5), seed=7)
    first = ds[11]
    np.testing.assert_array_equal(first["image"], ds[11]["image"])
    assert not torch.equal(first["image"], ds[12]["image"])

    def batches(workers):
        loader = DataLoader(ds, batch_size=4, sampler=EpochSampler(16), num_workers=workers)
        return [b["image"] for _ in range(2) for b in loader]  # two epochs

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 8
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)
    assert not torch.equal(serial[0], serial[4])  # epochs differ
    other = _dataset(sparse_fg, (9, 7, 5), seed=8)
    assert not torch.equal(other[11]["image"], first["image"])


def test_epoch_sampler_indices():
    sampler = EpochSampler(5)
    assert list(sampler) == [0, 1, 2, 3, 4]
    assert list(sampler) == [5, 6, 7, 8, 9]
    sampler.set_epoch(3)
    assert list(sampler) == [15, 16, 17, 18, 19]
    assert len(sampler) == 5
