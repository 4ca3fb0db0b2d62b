"""Batched data augmentation on the batch's device (2D and 3D).

Every parameter of every sample is drawn at once (one host transfer per batch); each
transform applies to the samples its probability selects. A sample's spatial
transforms (flips, rotation, isotropic zoom, all about the patch centre) are composed
into one affine and resampled once, by the cheapest exact route:

- nothing drawn: the sample is passed through, not copied;
- flips only: `torch.flip`, exact;
- zoom (with or without flips), no rotation: the affine is diagonal, so trilinear
  interpolation is separable: one 1D pass per axis, reading only the input region the
  output samples and writing only the output that lands inside the input (crop first);
  the same values as ``grid_sample`` on that grid (bilinear images, nearest labels);
- rotation: one sampling grid (built by broadcasting: several times cheaper than
  ``affine_grid`` on CPU) and one ``grid_sample`` each for the image (bilinear, all
  channels) and the label (nearest, so only existing labels appear).

Outside the input, images are 0 and labels 0 (background). Rotations are in voxel
units, so non-cubic patches are not sheared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segkit.errors import ConfigError


def _pair(value: float | Sequence[float], *, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return (float(value), float(value))
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ConfigError(f"augment.{name}=[{lo}, {hi}]: the lower bound exceeds the upper.")
    return lo, hi


@dataclass(frozen=True)
class SampleDraw:
    """The random parameters of one sample; None: that transform was not drawn.

    Attributes:
        flips: Spatial axes mirrored (0 = first spatial axis).
        angles: Rotation angles in radians about the axes of ``affine_grid``'s
            ``(x, y, z)`` = (last, middle, first spatial axis), applied x, then y, then
            z; one angle in 2D.
        zoom: Isotropic zoom factor (>1 magnifies).
        noise_std, blur_sigma, brightness, contrast, gamma: Intensity parameters.
    """

    flips: tuple[int, ...] = ()
    angles: tuple[float, ...] | None = None
    zoom: float | None = None
    noise_std: float | None = None
    blur_sigma: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    gamma: float | None = None


def rotation_matrix(angles: Sequence[float]) -> torch.Tensor:
    """Rotation in ``(x, y, z)`` order (float64): about x first, then y, then z; 2D: one angle."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    out = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles):
        a, b = [i for i in range(3) if i != axis]
        rot = torch.eye(3, dtype=torch.float64)
        c, s = math.cos(angle), math.sin(angle)
        rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
        out = rot @ out
    return out


def voxel_matrix(draw: SampleDraw, ndim: int) -> torch.Tensor:
    """The linear map of the spatial transforms in voxel units, array axis order.

    Output voxel ``o`` reads input position ``A @ (o - c) + c`` with ``c`` the patch
    centre ``(size - 1) / 2``: the pull-back of flipping, then rotating, then zooming
    (rotation and isotropic zoom commute).
    """
    lin = torch.eye(ndim, dtype=torch.float64)
    if draw.angles is not None:
        lin = rotation_matrix(draw.angles).flip(0, 1)  # (x, y, z) -> array axis order
    if draw.zoom is not None:
        lin = lin / draw.zoom
    signs = torch.ones(ndim, dtype=torch.float64)
    signs[list(draw.flips)] = -1.0
    return signs[:, None] * lin


def _affine_grid(theta: torch.Tensor, spatial: Sequence[int], device) -> torch.Tensor:
    """``F.affine_grid(theta[None], (1, 1, *spatial), align_corners=False)``, by broadcasting.

    The grid is affine in each output coordinate, so it is a sum of one small term per
    axis: one pass over the output instead of a ``(voxels, nd+1) @ (nd+1, nd)`` product.
    """
    nd = len(spatial)
    theta = theta.to(device=device, dtype=torch.float32)
    grid = theta[:, nd]
    for axis, n in enumerate(spatial):  # the largest term comes last
        base = (torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / n - 1
        term = base[:, None] * theta[:, nd - 1 - axis]
        grid = grid + term.view(*[n if i == axis else 1 for i in range(nd)], nd)
    return grid[None]


def _sample_positions(n: int, scale: float) -> torch.Tensor:
    centre = (n - 1) / 2
    return scale * (torch.arange(n, dtype=torch.float64) - centre) + centre


def _inside_range(valid: torch.Tensor) -> tuple[int, int]:
    # Positions are monotonic in the output index: the valid ones form one run.
    idx = valid.nonzero().squeeze(1)
    return int(idx[0]), int(idx[-1]) + 1


def _zoom_linear(x: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Separable (bi/tri)linear resampling of ``(1, C, *S)`` at per-axis scales about the centre."""
    nd, dev = x.ndim - 2, x.device
    plans, pads = [], []
    for axis in range(nd):
        n = x.shape[2 + axis]
        pos = _sample_positions(n, scales[axis])
        i0 = pos.floor()
        w1 = pos - i0
        i0 = i0.long()
        i1 = i0 + 1
        w0 = torch.where((i0 >= 0) & (i0 < n), 1 - w1, 0.0)
        w1 = torch.where((i1 >= 0) & (i1 < n), w1, 0.0)
        o_lo, o_hi = _inside_range((w0 > 0) | (w1 > 0))
        read = torch.cat([i0[w0 > 0], i1[w1 > 0]])
        r_lo, r_hi = int(read.min()), int(read.max()) + 1
        x = x.narrow(2 + axis, r_lo, r_hi - r_lo)  # crop first: only what is read
        j0, j1 = ((i[o_lo:o_hi] - r_lo).clamp(0, r_hi - r_lo - 1) for i in (i0, i1))
        plans.append((j0, w0[o_lo:o_hi], j1, w1[o_lo:o_hi]))
        pads.append((o_lo, n - o_hi))
    # Last axis as a small matrix product (a gather along it is slow), the others by
    # index_select of whole rows or planes.
    j0, w0, j1, w1 = plans[-1]
    mat = torch.zeros(len(j0), x.shape[-1], dtype=torch.float64)
    rows = torch.arange(len(j0))
    mat.index_put_((rows, j0), w0, accumulate=True)
    mat.index_put_((rows, j1), w1, accumulate=True)
    x = torch.matmul(x, mat.T.to(device=dev, dtype=x.dtype))
    for axis in range(nd - 1):
        j0, w0, j1, w1 = (t.to(dev) for t in plans[axis])
        shape = [-1 if i == 2 + axis else 1 for i in range(x.ndim)]
        out = x.index_select(2 + axis, j0).mul_(w0.to(x.dtype).view(shape))
        x = out.addcmul_(x.index_select(2 + axis, j1), w1.to(x.dtype).view(shape))
    return _pad_outside(x, pads)


def _zoom_nearest(y: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Separable nearest resampling of ``(1, 1, *S)`` labels, as ``grid_sample`` rounds."""
    pads = []
    for axis in range(y.ndim - 2):
        n = y.shape[2 + axis]
        idx = _sample_positions(n, scales[axis]).round().long()  # half to even, like nearbyint
        o_lo, o_hi = _inside_range((idx >= 0) & (idx < n))
        idx = idx[o_lo:o_hi]
        r_lo, r_hi = int(idx.min()), int(idx.max()) + 1
        y = y.narrow(2 + axis, r_lo, r_hi - r_lo).index_select(2 + axis, (idx - r_lo).to(y.device))
        pads.append((o_lo, n - o_hi))
    return _pad_outside(y, pads)


def _pad_outside(x: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
    if not any(lo or hi for lo, hi in pads):
        return x
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad: last axis first
    return F.pad(x, flat, value=0)


def spatial_transform(
    image: torch.Tensor, label: torch.Tensor, draw: SampleDraw
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample's flips, rotation and zoom as a single resampling.

    Args:
        image: ``(1, C, *S)`` float.
        label: ``(1, 1, *S)`` integer.
        draw: The sample's parameters.

    Returns:
        ``(image, label)``; the inputs themselves when no spatial transform was drawn.
    """
    nd = image.ndim - 2
    if draw.angles is None and draw.zoom is None:
        if not draw.flips:
            return image, label
        dims = tuple(2 + a for a in draw.flips)
        return image.flip(dims), label.flip(dims)
    lin = voxel_matrix(draw, nd)
    dtype = image.dtype
    if draw.angles is None:
        scales = lin.diagonal().tolist()
        moved = _zoom_linear(image.float(), scales).to(dtype)
        return moved, _zoom_nearest(label, scales)
    # grid_sample's coordinates: [-1, 1] per axis, (x, y, z) = reversed array axes.
    half = torch.tensor(image.shape[2:][::-1], dtype=torch.float64) / 2
    theta = lin.flip(0, 1) * half[None, :] / half[:, None]
    theta = torch.cat([theta, torch.zeros(nd, 1, dtype=torch.float64)], dim=1)
    grid = _affine_grid(theta, image.shape[2:], image.device)
    moved = F.grid_sample(image.float(), grid, mode="bilinear", align_corners=False)
    moved_lab = F.grid_sample(label.float(), grid, mode="nearest", align_corners=False)
    return moved.to(dtype), moved_lab.to(label.dtype)


def _blur_one(x: torch.Tensor, sigma: float) -> torch.Tensor:
    nd = x.ndim - 2
    radius = max(1, math.ceil(3 * sigma))
    weights = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    weights = [w / sum(weights) for w in weights]
    for axis in range(nd):
        dim, length = 2 + axis, x.shape[2 + axis]
        pad = [0] * (2 * nd)
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius  # last axis first
        padded = F.pad(x, pad, mode="replicate")
        out = padded.narrow(dim, 0, length) * weights[0]
        for k in range(1, 2 * radius + 1):
            out.add_(padded.narrow(dim, k, length), alpha=weights[k])
        x = out
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, *S)`` with one sigma (voxels) per sample.

    Each axis is a weighted sum of shifted copies (replicate padding, truncated at
    3 sigma): per-sample kernels without grouped convolutions, which are slow on CPU.
    """
    sigmas = sigma.tolist() if isinstance(sigma, torch.Tensor) else list(sigma)
    return torch.cat([_blur_one(x[i : i + 1], float(s)) for i, s in enumerate(sigmas)])


def _min_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = x.flatten(2).aminmax(dim=2, keepdim=True)
    shape = (*x.shape[:2], *[1] * (x.ndim - 2))
    return lo.view(shape), hi.view(shape)


def intensity_transform(
    image: torch.Tensor, draw: SampleDraw, *, generator=None, owned: bool = False
) -> torch.Tensor:
    """One sample's noise, blur, brightness, contrast and gamma, in that order.

    Args:
        image: ``(1, C, *S)`` float.
        draw: The sample's parameters.
        generator: Generator for the noise (on the image's device).
        owned: The image may be modified in place.
    """
    x = image
    if draw.noise_std is not None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x, owned = noise.mul_(draw.noise_std).add_(x), True
    if draw.blur_sigma is not None:
        x, owned = _blur_one(x, draw.blur_sigma), True
    if draw.brightness is not None:
        x, owned = (x.mul_(draw.brightness) if owned else x * draw.brightness), True
    if draw.contrast is not None:
        mean = x.flatten(2).mean(2).view(*x.shape[:2], *[1] * (x.ndim - 2))
        lo, hi = _min_max(x)
        x = (x.sub_(mean) if owned else x - mean).mul_(draw.contrast).add_(mean)
        x, owned = x.clamp_(lo, hi), True
    if draw.gamma is not None:
        lo, hi = _min_max(x)
        span = (hi - lo).clamp_min(1e-7)
        # t ** gamma as exp(gamma * log t): the same values, a vectorised kernel on CPU.
        x = (x.sub_(lo) if owned else x - lo).div_(span).clamp_(0, 1)
        x = x.log_().mul_(draw.gamma).exp_().mul_(span).add_(lo)
    return x


class BatchAugment(nn.Module):
    """Random spatial and intensity augmentation of a whole batch.

    Args:
        p_flip: Probability, per sample and axis, of mirroring.
        flip_axes: Spatial axes that may be flipped (None: all).
        p_rotate: Probability of a random rotation.
        rotation_deg: Maximum absolute angle per rotation axis, degrees.
        p_scale: Probability of a random isotropic zoom.
        scale_range: Zoom factor bounds (>1 magnifies).
        p_noise: Probability of additive Gaussian noise.
        noise_std: Bounds of the noise standard deviation.
        p_blur: Probability of a Gaussian blur.
        blur_sigma: Bounds of the blur sigma, voxels.
        p_brightness: Probability of a multiplicative brightness change.
        brightness_range: Bounds of the brightness factor.
        p_contrast: Probability of a contrast change (around the mean, range kept).
        contrast_range: Bounds of the contrast factor.
        p_gamma: Probability of a gamma change (on the sample's min-max range).
        gamma_range: Bounds of gamma.
    """

    def __init__(
        self,
        *,
        p_flip: float = 0.5,
        flip_axes: Sequence[int] | None = None,
        p_rotate: float = 0.2,
        rotation_deg: float = 15.0,
        p_scale: float = 0.2,
        scale_range: Sequence[float] = (0.85, 1.25),
        p_noise: float = 0.1,
        noise_std: Sequence[float] = (0.0, 0.1),
        p_blur: float = 0.1,
        blur_sigma: Sequence[float] = (0.5, 1.0),
        p_brightness: float = 0.15,
        brightness_range: Sequence[float] = (0.75, 1.25),
        p_contrast: float = 0.15,
        contrast_range: Sequence[float] = (0.75, 1.25),
        p_gamma: float = 0.15,
        gamma_range: Sequence[float] = (0.7, 1.5),
    ) -> None:
        super().__init__()
        probs = {
            "p_flip": p_flip,
            "p_rotate": p_rotate,
            "p_scale": p_scale,
            "p_noise": p_noise,
            "p_blur": p_blur,
            "p_brightness": p_brightness,
            "p_contrast": p_contrast,
            "p_gamma": p_gamma,
        }
        for name, p in probs.items():
            if not 0.0 <= float(p) <= 1.0:
                raise ConfigError(f"augment.{name}={p}: expected a probability in [0, 1].")
            setattr(self, name, float(p))
        self.flip_axes = None if flip_axes is None else tuple(int(a) for a in flip_axes)
        self.rotation_deg = float(rotation_deg)
        self.scale_range = _pair(scale_range, name="scale_range")
        self.noise_std = _pair(noise_std, name="noise_std")
        self.blur_sigma = _pair(blur_sigma, name="blur_sigma")
        self.brightness_range = _pair(brightness_range, name="brightness_range")
        self.contrast_range = _pair(contrast_range, name="contrast_range")
        self.gamma_range = _pair(gamma_range, name="gamma_range")
        if min(self.scale_range) <= 0 or min(self.blur_sigma) <= 0 or min(self.gamma_range) <= 0:
            raise ConfigError("augment: scale_range, blur_sigma and gamma_range must be > 0.")

    def draw(self, batch: int, ndim: int, *, device=None, generator=None) -> list[SampleDraw]:
        """Draws every sample's parameters (uniform draws on `device`, one transfer)."""
        axes = self.flip_axes if self.flip_axes is not None else tuple(range(ndim))
        if any(not 0 <= a < ndim for a in axes):
            raise ConfigError(
                f"augment.flip_axes={list(axes)}: spatial axes of a {ndim}D patch are "
                f"0..{ndim - 1}."
            )
        n_angles = 1 if ndim == 2 else 3
        ranges = [
            (self.p_noise, self.noise_std),
            (self.p_blur, self.blur_sigma),
            (self.p_brightness, self.brightness_range),
            (self.p_contrast, self.contrast_range),
            (self.p_gamma, self.gamma_range),
        ]
        width = len(axes) + 1 + n_angles + 2 + 2 * len(ranges)
        u = torch.rand(batch, width, device=device, generator=generator).tolist()
        limit = math.radians(self.rotation_deg)
        draws = []
        for row in u:
            it = iter(row)
            flips = tuple(a for a in axes if next(it) < self.p_flip)
            rotate = next(it) < self.p_rotate
            angles = tuple((2 * next(it) - 1) * limit for _ in range(n_angles))
            scale = next(it) < self.p_scale
            zoom = self._between(self.scale_range, next(it))
            values = []
            for p, bounds in ranges:
                chosen = next(it) < p
                value = self._between(bounds, next(it))
                values.append(value if chosen else None)
            draws.append(
                SampleDraw(flips, angles if rotate else None, zoom if scale else None, *values)
            )
        return draws

    @staticmethod
    def _between(bounds: tuple[float, float], u: float) -> float:
        return bounds[0] + (bounds[1] - bounds[0]) * u

    @torch.no_grad()
    def forward(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augments a batch.

        Args:
            image: ``(B, C, *S)`` float, S 2D or 3D.
            label: ``(B, 1, *S)`` integer.
            generator: Optional generator on the batch's device (reproducibility).

        Returns:
            The augmented ``(image, label)``, same shapes and dtypes.
        """
        nd = image.ndim - 2
        if nd not in (2, 3) or label.shape[2:] != image.shape[2:]:
            raise ConfigError(
                f"BatchAugment expects image (B, C, *S) and label (B, 1, *S) with 2D/3D S; "
                f"got {tuple(image.shape)} and {tuple(label.shape)}."
            )
        draws = self.draw(image.shape[0], nd, device=image.device, generator=generator)
        return self.apply(image, label, draws, generator=generator)

    @torch.no_grad()
    def apply(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        draws: Sequence[SampleDraw],
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Applies drawn parameters, one per sample; unchanged tensors are returned as is."""
        images, labels = [], []
        image_changed = label_changed = False
        for i, draw in enumerate(draws):
            x, y = image[i : i + 1], label[i : i + 1]
            moved, moved_lab = spatial_transform(x, y, draw)
            out = intensity_transform(moved, draw, generator=generator, owned=moved is not x)
            image_changed |= out is not x
            label_changed |= moved_lab is not y
            images.append(out)
            labels.append(moved_lab)
        return (
            torch.cat(images) if image_changed else image,
            torch.cat(labels) if label_changed else label,
        )
