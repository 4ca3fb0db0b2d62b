"""Batched augmentation: shapes, label integrity, exact flips, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from segkit import ConfigError
from segkit.data import BatchAugment
from segkit.data.augment import SampleDraw, gaussian_blur, spatial_transform

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
    with pytest.raises(ConfigError, match=r"flip_axes=\[3\].*0\.\.2"):
        BatchAugment(flip_axes=[3])(*_batch((5, 6, 7)))


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


# ------------------------------------------------- fused resampling vs references
#
# The references are built here from the documented semantics: output voxel o reads the
# input at A @ (o - c) + c, c = (size - 1) / 2, with A = F @ R / zoom in array-axis order
# (F: the flips' signs; R: rotations about affine_grid's x, y, z = reversed array axes,
# x first, then y, then z). Interpolation is linear with zeros outside (scipy's
# "grid-constant"), labels nearest.


def _rotation_xyz(angles) -> np.ndarray:
    if len(angles) == 1:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    out = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [i for i in range(3) if i != axis]
        rot = np.eye(3)
        rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
        out = rot @ out
    return out


def _reference_matrix(draw, nd) -> np.ndarray:
    rot = np.eye(nd) if draw.angles is None else _rotation_xyz(draw.angles)[::-1, ::-1]
    signs = np.array([-1.0 if a in draw.flips else 1.0 for a in range(nd)])
    return signs[:, None] * rot / (draw.zoom or 1.0)


def _scipy_affine(volume: np.ndarray, matrix: np.ndarray, order: int) -> np.ndarray:
    centre = (np.array(volume.shape) - 1) / 2
    offset = centre - matrix @ centre
    return ndimage.affine_transform(
        volume, matrix, offset=offset, order=order, mode="grid-constant", cval=0.0
    )


def _draws(nd):
    angles3 = (0.5, -0.3, 0.4) if nd == 3 else (0.5,)
    return [
        SampleDraw(flips=(0, nd - 1)),  # flips only: torch.flip
        SampleDraw(zoom=1.33),  # separable, magnifying (cropped input)
        SampleDraw(flips=(1,), zoom=0.71),  # separable, shrinking (output partly outside)
        SampleDraw(angles=angles3),  # one grid_sample
        SampleDraw(flips=(0,), angles=tuple(-a for a in angles3), zoom=1.2),
    ]


@pytest.mark.parametrize("spatial", [(12, 17, 9), (15, 22)], ids=["3d", "2d"])
def test_fused_resampling_matches_scipy_affine_transform(spatial):
    # One resampling per sample, whichever route it takes, equals scipy's affine_transform
    # with the composed matrix (linear for the image, nearest for the label).
    nd = len(spatial)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 2, *spatial, generator=g)
    label = torch.randint(0, 5, (1, 1, *spatial), generator=g).to(torch.uint8)
    for draw in _draws(nd):
        out, out_lab = spatial_transform(image, label, draw)
        mat = _reference_matrix(draw, nd)
        for ch in range(2):
            ref = _scipy_affine(image[0, ch].double().numpy(), mat, order=1)
            np.testing.assert_allclose(out[0, ch].numpy(), ref, atol=2e-5, err_msg=str(draw))
        ref_lab = _scipy_affine(label[0, 0].numpy(), mat, order=0)
        agree = (out_lab[0, 0].numpy() == ref_lab).mean()
        assert agree > 0.999, (draw, agree)  # a tie at .5 may round either way
        assert out_lab.dtype == torch.uint8


def test_fused_equals_flip_then_rotate_then_zoom_applied_one_by_one():
    # The semantics of the former code path, step by step with scipy (three interpolations
    # of a smooth volume): mirror, then rotate about the centre, then zoom about it. The
    # fused single resampling must agree within the extra steps' interpolation error.
    shape = (24, 30, 20)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    blob = np.exp(-np.sum(((grid - [9.0, 18.0, 11.0]) / [4.0, 5.0, 3.5]) ** 2, -1) / 2)
    volume = blob + 0.5 * np.exp(-np.sum(((grid - [15.0, 10.0, 8.0]) / 3.0) ** 2, -1) / 2)
    draw = SampleDraw(flips=(0, 2), angles=(0.35, -0.25, 0.3), zoom=1.15)
    step = np.flip(volume, axis=(0, 2))
    step = _scipy_affine(step, _rotation_xyz(draw.angles)[::-1, ::-1], order=1)
    step = _scipy_affine(step, np.eye(3) / draw.zoom, order=1)
    image = torch.from_numpy(volume.astype(np.float32))[None, None]
    out, _ = spatial_transform(image, torch.zeros_like(image, dtype=torch.uint8), draw)
    diff = np.abs(out[0, 0].numpy() - step)
    assert diff.max() < 0.03, diff.max()  # the peaks are 1 and 0.5
    assert np.abs(step).max() > 0.9  # the blob stayed in view


def test_rotation_route_matches_affine_grid_and_grid_sample():
    # The broadcast grid against torch's own affine_grid + grid_sample (the former path).
    spatial = (10, 13, 11)
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 1, *spatial, generator=g)
    label = torch.randint(0, 3, (1, 1, *spatial), generator=g)
    draw = SampleDraw(flips=(2,), angles=(0.2, 0.6, -0.4), zoom=0.9)
    half = torch.tensor(spatial[::-1], dtype=torch.float64) / 2
    lin = torch.from_numpy(_reference_matrix(draw, 3)[::-1, ::-1].copy())
    theta = torch.cat([lin * half[None] / half[:, None], torch.zeros(3, 1)], 1)
    ref_grid = F.affine_grid(theta[None].float(), [1, 1, *spatial], align_corners=False)
    ref = F.grid_sample(image, ref_grid, mode="bilinear", align_corners=False)
    ref_lab = F.grid_sample(label.float(), ref_grid, mode="nearest", align_corners=False)
    out, out_lab = spatial_transform(image, label, draw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert (out_lab == ref_lab.long()).float().mean() > 0.999


def test_labels_stay_in_label_set_and_dtype():
    # Non-contiguous label values through every route: nearest never invents a value.
    g = torch.Generator().manual_seed(2)
    values = torch.tensor([0, 3, 7], dtype=torch.uint8)
    label = values[torch.randint(0, 3, (6, 1, 15, 14, 13), generator=g)]
    image = label.float() + 0.1 * torch.randn(label.shape, generator=g)
    aug = BatchAugment(
        **{**OFF, "p_flip": 0.5, "p_rotate": 0.5, "rotation_deg": 40.0, "p_scale": 0.7}
    )
    seen = set()
    for seed in range(4):
        _, out = aug(image, label, generator=torch.Generator().manual_seed(seed))
        assert out.dtype == torch.uint8 and out.shape == label.shape
        seen |= set(out.unique().tolist())
    assert seen == {0, 3, 7}


def test_untouched_samples_are_not_resampled():
    # No rotation and no zoom drawn: exact copies (flips) or the inputs themselves.
    image, label = _batch((9, 8, 7), b=2)
    aug = BatchAugment(**OFF)
    draws = [SampleDraw(), SampleDraw(flips=(1,))]
    out_img, out_lab = aug.apply(image, label, draws)
    assert torch.equal(out_img[0], image[0]) and torch.equal(out_lab[1], label[1].flip(2))
    same_img, same_lab = aug.apply(image, label, [SampleDraw(), SampleDraw()])
    assert same_img is image and same_lab is label
