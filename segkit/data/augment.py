"""Batched data augmentation on the batch's device (2D and 3D).

All random draws are per sample; each transform is applied to the samples
selected by its probability. Spatial transforms (rotation + scaling) share one
``affine_grid``/``grid_sample`` call per batch (over the selected samples),
bilinear for images and nearest for labels; flips use `torch.flip` (one call per
sample, all its drawn axes at once) and are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def _uniform(n: int, bounds: tuple[float, float], ref: torch.Tensor, gen) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, device=ref.device, generator=gen)


def _bcast(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.view(-1, *([1] * (ndim - 1)))


def _rotation_2d(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _rotation_3d(angles: torch.Tensor) -> torch.Tensor:
    n = angles.shape[0]
    eye = torch.eye(3, device=angles.device, dtype=angles.dtype).expand(n, 3, 3)
    out = eye
    for axis in range(3):
        rot = eye.clone()
        a, b = [i for i in range(3) if i != axis]
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        rot[:, a, a], rot[:, a, b], rot[:, b, a], rot[:, b, b] = c, -s, s, c
        out = rot @ out
    return out


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, *S)`` with one sigma (voxels) per sample.

    Each axis is a weighted sum of shifted copies (replicate padding): per-sample
    kernels without grouped convolutions, which are slow on CPU.
    """
    nd = x.ndim - 2
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    weights = torch.exp(-0.5 * (offsets[None] / sigma[:, None].to(x.dtype)) ** 2)
    weights = weights / weights.sum(1, keepdim=True)  # (B, 2r+1)
    for axis in range(nd):
        dim, length = 2 + axis, x.shape[2 + axis]
        pad = [0] * (2 * nd)
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius  # last axis first
        padded = F.pad(x, pad, mode="replicate")
        out = torch.zeros_like(x)
        for k in range(2 * radius + 1):
            out += _bcast(weights[:, k], x.ndim) * padded.narrow(dim, k, length)
        x = out
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

    def _mask(self, p: float, x: torch.Tensor, gen) -> torch.Tensor:
        return torch.rand(x.shape[0], device=x.device, generator=gen) < p

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
        gen = generator
        image, label = self._flip(image, label, gen)
        image, label = self._spatial(image, label, gen)
        return self._intensity(image, gen), label

    def _flip(self, image, label, gen):
        nd = image.ndim - 2
        axes = self.flip_axes if self.flip_axes is not None else tuple(range(nd))
        draws = torch.rand(image.shape[0], len(axes), device=image.device, generator=gen)
        flips = (draws < self.p_flip).tolist()
        if not any(any(row) for row in flips):
            return image, label
        # One exact flip per sample over all its drawn axes.
        dims = [tuple(1 + a for a, f in zip(axes, row) if f) for row in flips]
        image = torch.stack([x.flip(d) if d else x for x, d in zip(image, dims)])
        label = torch.stack([y.flip(d) if d else y for y, d in zip(label, dims)])
        return image, label

    def _spatial(self, image, label, gen):
        b, nd = image.shape[0], image.ndim - 2
        rot_mask = self._mask(self.p_rotate, image, gen)
        scale_mask = self._mask(self.p_scale, image, gen)
        if not (rot_mask.any() or scale_mask.any()):
            return image, label
        dev, dtype = image.device, torch.float32
        limit = math.radians(self.rotation_deg)
        n_angles = 1 if nd == 2 else 3
        angles = (torch.rand(b, n_angles, device=dev, generator=gen) * 2 - 1) * limit
        angles = angles * rot_mask[:, None]
        rot = _rotation_2d(angles[:, 0]) if nd == 2 else _rotation_3d(angles)
        zoom = _uniform(b, self.scale_range, image, gen)
        zoom = torch.where(scale_mask, zoom, torch.ones_like(zoom))
        # affine_grid works in [-1, 1] per axis (x = last axis); rotate in voxel units
        # so non-cubic patches are not sheared.
        size = torch.tensor(image.shape[2:][::-1], device=dev, dtype=dtype)
        to_vox, to_norm = torch.diag(size / 2), torch.diag(2 / size)
        mat = to_norm @ rot.to(dtype) @ to_vox / zoom[:, None, None]
        theta = torch.cat([mat, torch.zeros(b, nd, 1, device=dev, dtype=dtype)], dim=2)
        idx = (rot_mask | scale_mask).nonzero().squeeze(1)
        shape = [len(idx), *image.shape[1:]]
        grid = F.affine_grid(theta[idx], shape, align_corners=False)
        moved = F.grid_sample(image[idx].float(), grid, mode="bilinear", align_corners=False)
        moved_lab = F.grid_sample(label[idx].float(), grid, mode="nearest", align_corners=False)
        image, label = image.clone(), label.clone()
        image[idx] = moved.to(image.dtype)
        label[idx] = moved_lab.round().to(label.dtype)
        return image, label

    def _intensity(self, image, gen):
        b, red = image.shape[0], tuple(range(2, image.ndim))
        mask = self._mask(self.p_noise, image, gen)
        if mask.any():
            std = _uniform(b, self.noise_std, image, gen) * mask
            noise = torch.randn(image.shape, device=image.device, generator=gen, dtype=image.dtype)
            image = image + noise * _bcast(std, image.ndim)
        mask = self._mask(self.p_blur, image, gen)
        if mask.any():
            sigma = _uniform(b, self.blur_sigma, image, gen)
            idx = mask.nonzero().squeeze(1)
            image = image.clone()
            image[idx] = gaussian_blur(image[idx], sigma[idx])
        mask = self._mask(self.p_brightness, image, gen)
        if mask.any():
            factor = torch.where(mask, _uniform(b, self.brightness_range, image, gen), 1.0)
            image = image * _bcast(factor, image.ndim)
        mask = self._mask(self.p_contrast, image, gen)
        if mask.any():
            factor = _bcast(_uniform(b, self.contrast_range, image, gen), image.ndim)
            mean = image.mean(dim=red, keepdim=True)
            lo, hi = image.amin(dim=red, keepdim=True), image.amax(dim=red, keepdim=True)
            changed = ((image - mean) * factor + mean).clamp(lo, hi)
            image = torch.where(_bcast(mask, image.ndim), changed, image)
        mask = self._mask(self.p_gamma, image, gen)
        if mask.any():
            gamma = _bcast(_uniform(b, self.gamma_range, image, gen), image.ndim)
            lo, hi = image.amin(dim=red, keepdim=True), image.amax(dim=red, keepdim=True)
            span = (hi - lo).clamp_min(1e-7)
            changed = ((image - lo) / span).clamp(0, 1) ** gamma * span + lo
            image = torch.where(_bcast(mask, image.ndim), changed, image)
        return image
