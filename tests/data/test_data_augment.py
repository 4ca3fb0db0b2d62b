"""Batched augmentation: shapes, label integrity, exact flips, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from segkit import ConfigError
from segkit.data import BatchAugment
from segkit.data.augment import gaussian_blur

OFF = dict(
    p_flip=0.0,
    p_rotate=0.0,
    p_scale=0.0,
    p_noise=0.0,
    p_blur=0.0,
    p_brightness=0.0,
    p_contrast=0.0,
    p_gamma=0.0,
)


def _batch(spatial, b=3, c=2, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, c, *spatial, generator=g)
    label = torch.randint(0, classes, (b, 1, *spatial), generator=g)
    return image, label


@pytest.mark.parametrize("spatial", [(11, 9, 7), (13, 10)], ids=["3d", "2d"])
def test_everything_on_keeps_shapes_and_label_set(spatial):
    image, label = _batch(spatial)
    aug = BatchAugment(**{k: 1.0 for k in OFF})
    out_img, out_lab = aug(image, label, generator=torch.Generator().manual_seed(1))
    assert out_img.shape == image.shape and out_img.dtype == image.dtype
    assert out_lab.shape == label.shape and out_lab.dtype == torch.int64
    assert set(out_lab.unique().tolist()) <= set(label.unique().tolist())
    assert torch.isfinite(out_img).all()
    assert not torch.equal(out_img, image)


@pytest.mark.parametrize("spatial", [(11, 9, 7), (13, 10)], ids=["3d", "2d"])
def test_flips_are_exact(spatial):
    image, label = _batch(spatial)
    aug = BatchAugment(**{**OFF, "p_flip": 1.0})
    out_img, out_lab = aug(image, label)
    dims = tuple(range(2, 2 + len(spatial)))
    assert torch.equal(out_img, image.flip(dims))
    assert torch.equal(out_lab, label.flip(dims))


def test_single_axis_flip():
    image, label = _batch((5, 6, 7))
    out_img, out_lab = BatchAugment(**{**OFF, "p_flip": 1.0, "flip_axes": [1]})(image, label)
    assert torch.equal(out_img, image.flip(3)) and torch.equal(out_lab, label.flip(3))


def test_all_off_is_identity():
    image, label = _batch((7, 8, 9))
    out_img, out_lab = BatchAugment(**OFF)(image, label)
    assert torch.equal(out_img, image) and torch.equal(out_lab, label)


def test_zero_rotation_grid_is_identity():
    image, label = _batch((9, 8, 7))
    aug = BatchAugment(**{**OFF, "p_rotate": 1.0, "rotation_deg": 0.0})
    out_img, out_lab = aug(image, label)
    torch.testing.assert_close(out_img, image, atol=1e-5, rtol=0)
    assert torch.equal(out_lab, label)


def test_rotation_moves_label_with_image():
    # The image is the label: after any rotation/zoom they must still agree
    # (nearest vs bilinear differ only at class borders).
    _, label = _batch((21, 19, 17), b=4, c=1)
    image = label.float()
    aug = BatchAugment(**{**OFF, "p_rotate": 1.0, "rotation_deg": 30.0, "p_scale": 1.0})
    out_img, out_lab = aug(image, label, generator=torch.Generator().manual_seed(3))
    inside = out_img.round() == out_img  # voxels not on a border
    assert (out_lab.float()[inside] == out_img[inside]).float().mean() > 0.99


def test_intensity_does_not_touch_labels_and_is_seeded():
    image, label = _batch((9, 9, 9))
    kw = {
        **OFF,
        "p_noise": 1.0,
        "p_blur": 1.0,
        "p_brightness": 1.0,
        "p_contrast": 1.0,
        "p_gamma": 1.0,
    }
    aug = BatchAugment(**kw)
    a = aug(image, label, generator=torch.Generator().manual_seed(5))
    b = aug(image, label, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[1], label)
    assert torch.equal(a[0], b[0])


def test_blur_matches_scipy():
    x = torch.randn(2, 1, 12, 11, 10, dtype=torch.float64)
    out = gaussian_blur(x, torch.tensor([1.0, 1.0]))
    ref = ndimage.gaussian_filter(x[1, 0].numpy(), 1.0, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(out[1, 0].numpy(), ref, atol=1e-10)


def test_bad_config():
    with pytest.raises(ConfigError, match="p_noise=1.5"):
        BatchAugment(p_noise=1.5)
    with pytest.raises(ConfigError, match="scale_range"):
        BatchAugment(scale_range=[1.2, 0.8])


def _centroid_and_cov(mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    pts = np.argwhere(mask.numpy()).astype(float)
    return pts.mean(0), np.cov(pts.T)


def test_rotation_of_non_cubic_patch_is_rigid():
    # A ball at the centre and a small cube off-centre of a 17×33×49 patch. A rotation in
    # voxel units keeps the ball round and the cube's distance from the centre; rotating
    # in affine_grid's [-1, 1] units instead would stretch both by up to 49/17.
    shape = (17, 33, 49)
    centre = (np.array(shape) - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    ball = np.linalg.norm(grid - centre, axis=-1) <= 6
    cube = np.zeros(shape, bool)
    cube[7:10, 15:18, 30:33] = True  # centre (8, 16, 31): stays inside when rotated
    label = torch.from_numpy(ball.astype(np.int64) + 2 * cube)[None, None].repeat(4, 1, 1, 1, 1)
    aug = BatchAugment(**{**OFF, "p_rotate": 1.0, "rotation_deg": 40.0})
    _, out = aug(label.float(), label, generator=torch.Generator().manual_seed(0))
    offset = np.array([8.0, 16.0, 31.0]) - centre
    moved = []
    for sample in out[:, 0]:
        c_ball, cov = _centroid_and_cov(sample == 1)
        eig = np.linalg.eigvalsh(cov)
        assert np.abs(c_ball - centre).max() < 0.5
        assert eig.max() / eig.min() < 1.15  # still a ball, not an ellipsoid
        assert abs((sample == 1).sum().item() / ball.sum() - 1) < 0.05
        c_cube, _ = _centroid_and_cov(sample == 2)
        assert abs(np.linalg.norm(c_cube - centre) - np.linalg.norm(offset)) < 1.0
        moved.append(np.linalg.norm(c_cube - centre - offset))
    assert max(moved) > 3  # it did rotate
