"""Fixtures: tiny trained checkpoints and odd, anisotropic, oblique NIfTI inputs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segkit.data.preprocess import Preprocessor

NUM_CLASSES = 3


def oblique_affine(spacing=(0.9, 1.3, 2.1), angle_deg: float = 17.0) -> np.ndarray:
    """Rotated, axis-permuted, flipped (non-canonical) affine with anisotropic zooms."""
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    perm = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm @ np.diag(spacing)
    affine[:3, 3] = [4.0, -9.0, 13.0]
    return affine


def write_image(
    path: Path,
    shape=(23, 19, 13),
    channels: int = 1,
    seed: int = 0,
    affine: np.ndarray | None = None,
) -> Path:
    """A blob image with a zero margin; channels in the 4th axis when ``channels > 1``."""
    rng = np.random.default_rng(seed)
    data = np.zeros((*shape, channels), np.float32)
    inner = tuple(slice(2, n - 2) for n in shape)
    data[inner] = rng.normal(50, 5, size=data[inner].shape)
    box = tuple(slice(n // 3, n // 3 + max(2, n // 3)) for n in shape)
    data[box] += 60
    if channels == 1:
        data = data[..., 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, oblique_affine() if affine is None else affine), str(path))
    return path


def _batches(channels: int, n: int = 2, dims: int = 3):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        image = torch.randn(2, channels, *(16, 16, 12)[:dims], generator=gen)
        label = (image[:, :1] > 0.5).long() + (image[:, :1] > 1.5).long()
        out.append({"image": image, "label": label})
    return out


def make_checkpoint(
    path: Path, *, in_channels: int = 1, epochs: int = 2, norm: str = "batch"
) -> Path:
    """Trains a tiny SegModule for ``epochs`` on random patches and saves a Lightning checkpoint."""
    train_tiny(in_channels=in_channels, epochs=epochs, norm=norm).save_checkpoint(path)
    return path


REGIONS = [{"name": "foreground", "labels": [1, 2]}, {"name": "high", "labels": [2]}]
"""Nested regions of the tiny model's labels, for ``train_tiny(regions=True)``."""


def train_tiny(
    *,
    in_channels: int = 1,
    epochs: int = 2,
    norm: str = "batch",
    regions: bool = False,
    dims: int = 3,
    slice_axis: int = 2,
    **model,
):
    """The Lightning trainer after fitting a tiny SegModule (``trainer.lightning_module``) for
    ``epochs`` on random patches; ``model`` adds model config keys (e.g. a user block); with
    ``regions``, one sigmoid output per region of :data:`REGIONS`; ``dims=2``: a 2D network
    slicing volumes across ``slice_axis``."""
    import pytorch_lightning as pl

    from segkit.training.module import SegModule

    torch.manual_seed(0)
    module = SegModule(
        model={
            "spatial_dims": dims,
            "in_channels": in_channels,
            "out_channels": len(REGIONS) if regions else NUM_CLASSES,
            "depth": 3,
            "channels": 4,
            "norm": norm,
            "deep_supervision": True,
            **model,
        },
        optim={
            "optimizer": {
                "_target_": "torch.optim.SGD",
                "_partial_": True,
                "lr": 0.01,
                "momentum": 0.9,
            },
            "scheduler": {"name": "none"},
        },
        loss={"dice_weight": 1.0, "ce_weight": 1.0},
        patch_size=[16, 16, 12][:dims],
        slice_axis=slice_axis,
        label_names={0: "background", 1: "low", 2: "high"},
        regions=REGIONS if regions else None,
        output_head={"kind": "sigmoid", "region_order": [1, 2]} if regions else None,
        preprocessor=Preprocessor(
            target_spacing=(1.0, 1.5, 2.0),
            normalization=("zscore",) * in_channels,
            num_channels=in_channels,
            num_classes=NUM_CLASSES,
        ).to_dict(),
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(_batches(in_channels, dims=dims), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return trainer


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A 1-channel model trained for two epochs (batch norm)."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.ckpt", epochs=2)


@pytest.fixture(scope="session")
def ckpt2(tmp_path_factory) -> Path:
    """A 2-channel model (one epoch)."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt2") / "best.ckpt", in_channels=2, epochs=1)


def outputs(folder: Path) -> list[str]:
    """Every file left in ``folder`` (hidden temporaries included)."""
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []
