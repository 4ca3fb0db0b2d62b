"""Shared by bench_loader.py and bench_augment.py: synthetic CT cases and the three
training-input pipelines (segkit, MONAI, nnU-Net v2) at matched settings.

Matched settings: the same cases, patch size and foreground oversampling (0.33), and
the augmentation of ``conf/data/msd.yaml`` (which follows nnU-Net's defaults): flips
p 0.5 per axis, rotation p 0.2 up to ±30° per axis, isotropic zoom p 0.2 in [0.7, 1.4],
noise p 0.1, blur p 0.2 (sigma 0.5-1), brightness and contrast p 0.15 (0.75-1.25),
gamma p 0.3 (0.7-1.5). MONAI gets the same from its own transforms; nnU-Net runs what
``nnUNetTrainer.get_training_transforms`` builds (its defaults, which add low-resolution
simulation, an inverted gamma and deep-supervision targets on the CPU).

Every pipeline runs in the calling process on one thread (torch, BLAS/OpenMP and blosc2
limited to 1), so a rate is patches per second per CPU core. The anchors are imported
lazily; they belong to a benchmark environment, never to segkit's dependencies.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
INSTALL = (
    "python -m venv --system-site-packages benchenv && benchenv/bin/pip install "
    "--no-deps monai==1.6.1 nnunetv2==2.8.1 batchgeneratorsv2 batchgenerators acvl-utils "
    "dynamic-network-architectures==0.4.4 einops threadpoolctl blosc2 numexpr ndindex msgpack "
    "scikit-image lazy_loader tifffile SimpleITK connected-components-3d pandas seaborn "
    "scikit-learn narwhals httpx"
)
SPACING = (0.8, 0.8, 2.5)  # mm, abdominal-CT-like
LABELS = {0: "background", 1: "organ", 2: "tumour"}
OVERSAMPLE_FG = 0.33
# nnunet_default at 128^3 on an H100: about 30 ms per training step of batch 2 (the
# figure of issue 10, not measured here).
STEP_S, STEP_BATCH = 0.030, 2
NEEDED_RATE = STEP_BATCH / STEP_S  # patches/s the loader must deliver to keep the GPU busy


def augment_settings() -> dict[str, Any]:
    """The ``data.augment`` block of conf/data/msd.yaml (plain dict)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(REPO / "conf/data/msd.yaml").augment)


def one_thread() -> None:
    """Limits torch, BLAS/OpenMP and blosc2 to one thread in this process."""
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    try:
        import blosc2

        blosc2.set_nthreads(1)
    except ImportError:
        pass


def machine_line() -> str:
    """Machine, software and load, for the header of a table."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"python {platform.python_version()}, load average {load}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )


# ----------------------------------------------------------------------------- data


def ct_volume(shape: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in HU (int16) and its label (uint8: 1 organ, 2 tumour).

    Air at -1000 around an elliptic body (soft tissue ~40 HU, a spine ~700 HU), one
    large ellipsoidal organ (~60 HU, about 4 % of the volume) holding a tumour (~100 HU),
    plus Gaussian noise: the intensity layout and class balance of an abdominal CT.
    """
    nx, ny, nz = (int(s) for s in shape)
    x = np.linspace(-1, 1, nx, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    z = np.linspace(-1, 1, nz, dtype=np.float32)[None, None, :]
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1.0
    spine = ((x / 0.1) ** 2 + ((y - 0.45) / 0.1) ** 2 <= 1.0) & np.ones_like(z, bool)
    c = rng.uniform(-0.15, 0.15, size=3).astype(np.float32)
    organ = ((x - c[0] + 0.25) / 0.35) ** 2 + ((y - c[1]) / 0.3) ** 2 + ((z - c[2]) / 0.6) ** 2
    organ = (organ <= 1.0) & body
    t = c + rng.uniform(-0.08, 0.08, size=3).astype(np.float32)
    tumour = ((x - t[0] + 0.25) / 0.08) ** 2 + ((y - t[1]) / 0.08) ** 2 + ((z - t[2]) / 0.2) ** 2
    tumour = (tumour <= 1.0) & organ
    image = np.full((nx, ny, nz), -1000.0, dtype=np.float32)
    image[np.broadcast_to(body, image.shape)] = 40.0
    image[np.broadcast_to(spine, image.shape)] = 700.0
    image[organ] = 60.0
    image[tumour] = 100.0
    image += 20.0 * rng.standard_normal(image.shape, dtype=np.float32)
    label = organ.astype(np.uint8) + tumour.astype(np.uint8)
    return image.astype(np.int16), label


def write_ct_dataset(root: Path, *, num_cases: int, shape: Sequence[int], seed: int = 0) -> Path:
    """Writes `num_cases` CT-like cases in the Decathlon layout (int16 ``.nii.gz``)."""
    root = Path(root)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([*SPACING, 1.0])
    training = []
    for i in range(num_cases):
        image, label = ct_volume(shape, rng)
        name = f"ct_{i:03d}.nii.gz"
        for sub, arr in (("imagesTr", image), ("labelsTr", label)):
            img = nib.Nifti1Image(arr, affine)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(root / sub / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "SyntheticCT",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "numTraining": num_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


# ------------------------------------------------------------------------ pipelines


def deep_supervision_scales(patch: Sequence[int]) -> list[list[float]]:
    """nnU-Net's scales for a network pooling by 2 down to 4 voxels (at most 5 pools)."""
    pools = min(5, int(math.log2(min(patch))) - 2)
    return [[0.5**k] * len(patch) for k in range(pools)]


class SegkitPipeline:
    """segkit: mmap ``.npy`` cache and `PatchDataset`; `BatchAugment` on the stacked batch."""

    name = "segkit"

    def __init__(self, prep, patch: Sequence[int], *, device: str = "cpu") -> None:
        from segkit.data import BatchAugment, PatchDataset

        self.ds = PatchDataset(
            cases_dir=prep.cases_dir,
            case_ids=prep.case_ids,
            patch_size=patch,
            num_samples=10**9,
            oversample_foreground=OVERSAMPLE_FG,
        )
        self.device = torch.device(device)
        self.aug = BatchAugment(**augment_settings())
        self.gen = torch.Generator(self.device).manual_seed(0)
        self.i = 0

    def batch(self, size: int, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.ds[self.i + k] for k in range(size)]
        self.i += size
        image = torch.stack([it["image"] for it in items])
        label = torch.stack([it["label"] for it in items])
        if augment:
            image, label = image.to(self.device), label.to(self.device)
            image, label = self.aug(image, label, generator=self.gen)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        return image, label


def monai_random_transforms(keys: tuple[str, str] = ("image", "label")) -> list:
    """MONAI's transforms matching conf/data/msd.yaml's augmentation."""
    from monai import transforms as mt

    a = augment_settings()
    rot = math.radians(a["rotation_deg"])
    img = keys[0]
    flips = [mt.RandFlipd(keys, prob=a["p_flip"], spatial_axis=ax) for ax in range(3)]
    lo, hi = a["brightness_range"]
    clo, chi = a["contrast_range"]
    if not math.isclose(1 - lo, hi - 1) or not math.isclose(1 - clo, chi - 1):
        raise ValueError("MONAI's scale factors are symmetric around 1; make the ranges so.")
    return [
        *flips,
        mt.RandRotated(
            keys,
            range_x=rot,
            range_y=rot,
            range_z=rot,
            prob=a["p_rotate"],
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        mt.RandZoomd(
            keys,
            min_zoom=a["scale_range"][0],
            max_zoom=a["scale_range"][1],
            prob=a["p_scale"],
            mode=("trilinear", "nearest"),
            keep_size=True,
        ),
        mt.RandGaussianNoised(img, prob=a["p_noise"], mean=0.0, std=a["noise_std"][1]),
        mt.RandGaussianSmoothd(
            img,
            sigma_x=a["blur_sigma"],
            sigma_y=a["blur_sigma"],
            sigma_z=a["blur_sigma"],
            prob=a["p_blur"],
        ),
        mt.RandScaleIntensityd(img, factors=hi - 1, prob=a["p_brightness"]),
        mt.RandScaleIntensityFixedMeand(
            img, factors=chi - 1, fixed_mean=True, preserve_range=True, prob=a["p_contrast"]
        ),
        mt.RandAdjustContrastd(img, gamma=a["gamma_range"], prob=a["p_gamma"]),
    ]


class MonaiPipeline:
    """MONAI: ``CacheDataset`` of the NIfTI cases + ``RandCropByPosNegLabeld`` (+ transforms).

    The deterministic head (load, channel first, RAS, CT window to [0, 1], pad to the
    patch, foreground/background indices) is cached in memory; the random crop and,
    when augmenting, `monai_random_transforms` run per item. ``copy_cache=False`` and
    cached indices (``FgBgToIndicesd``) are MONAI's documented fast path; without them
    every item deep-copies the cached volume or rescans its label.
    """

    name = "MONAI"

    def __init__(self, root: Path, patch: Sequence[int], *, workers: int = 2) -> None:
        from monai import transforms as mt
        from monai.data import CacheDataset

        keys = ("image", "label")
        files = json.loads((Path(root) / "dataset.json").read_text())["training"]
        data = [{k: str(Path(root) / f[k]) for k in keys} for f in files]
        ras = (("L", "R"), ("P", "A"), ("I", "S"))
        pipeline = mt.Compose(
            [
                mt.LoadImaged(keys),
                mt.EnsureChannelFirstd(keys),
                mt.Orientationd(keys, axcodes="RAS", labels=ras),
                mt.ScaleIntensityRanged(
                    "image", a_min=-200, a_max=300, b_min=0, b_max=1, clip=True
                ),
                mt.SpatialPadd(keys, spatial_size=patch),
                mt.FgBgToIndicesd("label", fg_postfix="_fg", bg_postfix="_bg"),
                mt.RandCropByPosNegLabeld(
                    keys,
                    label_key="label",
                    spatial_size=patch,
                    pos=OVERSAMPLE_FG,
                    neg=1 - OVERSAMPLE_FG,
                    num_samples=1,
                    fg_indices_key="label_fg",
                    bg_indices_key="label_bg",
                ),
            ]
        )
        pipeline.set_random_state(seed=0)
        self.ds = CacheDataset(
            data, pipeline, cache_rate=1.0, num_workers=workers, copy_cache=False, progress=False
        )
        self.aug = mt.Compose(monai_random_transforms(keys))
        self.aug.set_random_state(seed=0)
        self.rng = np.random.default_rng(0)

    def cached_bytes(self) -> int:
        """Bytes the in-memory cache holds (volumes and voxel indices)."""
        return sum(int(np.asarray(v).nbytes) for item in self.ds._cache for v in item.values())

    def batch(self, size: int, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        items = []
        for _ in range(size):
            item = self.ds[int(self.rng.integers(len(self.ds)))][0]
            items.append(self.aug(item) if augment else item)
        image = torch.stack([torch.as_tensor(it["image"]) for it in items])
        label = torch.stack([torch.as_tensor(it["label"]) for it in items])
        return image, label


def nnunet_transforms(patch: Sequence[int], *, matched: bool = False):
    """What ``nnUNetTrainer.get_training_transforms`` builds for a 3D `patch`.

    Returns ``(transforms, initial_patch_size)``. With ``matched=True``, the same
    batchgeneratorsv2 classes restricted to segkit's transform set (no low-resolution
    simulation, no inverted gamma, no deep-supervision targets, blur on every channel).
    """
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    a = augment_settings()
    rot = math.radians(a["rotation_deg"])
    rotation = (-rot, rot)
    # configure_rotation_dummyDA_mirroring_and_inital_patch_size, for an isotropic patch:
    initial = get_patch_size(tuple(patch), rotation, rotation, rotation, (0.85, 1.25))
    if not matched:
        tr = nnUNetTrainer.get_training_transforms(
            tuple(patch),
            rotation,
            deep_supervision_scales(patch),
            (0, 1, 2),
            False,
            use_mask_for_norm=[False],
            is_cascaded=False,
            foreground_labels=[1, 2],
            regions=None,
            ignore_label=None,
        )
        return tr, tuple(int(s) for s in initial)
    from batchgeneratorsv2.transforms.intensity.brightness import (
        MultiplicativeBrightnessTransform,
    )
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

    std_hi = a["noise_std"][1]
    tr = ComposeTransforms(
        [
            SpatialTransform(
                tuple(patch),
                patch_center_dist_from_border=0,
                random_crop=False,
                p_elastic_deform=0,
                p_rotation=a["p_rotate"],
                rotation=rotation,
                p_scaling=a["p_scale"],
                scaling=tuple(a["scale_range"]),
                p_synchronize_scaling_across_axes=1,
                bg_style_seg_sampling=False,
                border_mode_seg="constant",
                padding_value_seg=-1,
            ),
            RandomTransform(
                GaussianNoiseTransform(
                    noise_variance=(0, std_hi**2), p_per_channel=1, synchronize_channels=True
                ),
                apply_probability=a["p_noise"],
            ),
            RandomTransform(
                GaussianBlurTransform(
                    blur_sigma=tuple(a["blur_sigma"]),
                    synchronize_channels=False,
                    synchronize_axes=True,
                    p_per_channel=1,
                    benchmark=True,
                ),
                apply_probability=a["p_blur"],
            ),
            RandomTransform(
                MultiplicativeBrightnessTransform(
                    multiplier_range=BGContrast(tuple(a["brightness_range"])),
                    synchronize_channels=False,
                    p_per_channel=1,
                ),
                apply_probability=a["p_brightness"],
            ),
            RandomTransform(
                ContrastTransform(
                    contrast_range=BGContrast(tuple(a["contrast_range"])),
                    preserve_range=True,
                    synchronize_channels=False,
                    p_per_channel=1,
                ),
                apply_probability=a["p_contrast"],
            ),
            RandomTransform(
                GammaTransform(
                    gamma=BGContrast(tuple(a["gamma_range"])),
                    p_invert_image=0,
                    synchronize_channels=False,
                    p_per_channel=1,
                    p_retain_stats=0,
                ),
                apply_probability=a["p_gamma"],
            ),
            MirrorTransform(allowed_axes=(0, 1, 2)),
            RemoveLabelTansform(-1, 0),
        ]
    )
    return tr, tuple(int(s) for s in initial)


def write_nnunet_preprocessed(prep, folder: Path, patch: Sequence[int]) -> None:
    """Writes segkit's preprocessed cases in nnU-Net v2's preprocessed format.

    nnU-Net's own writer (``nnUNetDatasetBlosc2.save_case`` with ``comp_blosc2_params``
    chunking for `patch`) and foreground sampling (``_sample_foreground_locations``), on
    the same normalised arrays segkit trains from, transposed to nnU-Net's axis order
    (coarsest axis first, as its SimpleITK reader gives).
    """
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import (
        comp_blosc2_params,
        nnUNetDatasetBlosc2,
    )

    from segkit.data.cache import open_case

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    patch = tuple(patch)[::-1]
    for cid in prep.case_ids:
        image, label, _ = open_case(prep.cases_dir, cid)
        data = np.ascontiguousarray(np.asarray(image, np.float32).transpose(0, 3, 2, 1))
        seg = np.ascontiguousarray(np.asarray(label, np.int16).transpose(2, 1, 0)[None])
        props = {
            "class_locations": DefaultPreprocessor._sample_foreground_locations(seg, [1, 2]),
            "spacing": list(SPACING[::-1]),
            "shape_before_cropping": data.shape[1:],
        }
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(
            data,
            seg,
            props,
            str(folder / cid),
            chunks=chunks,
            blocks=blocks,
            chunks_seg=chunks_seg,
            blocks_seg=blocks_seg,
        )


class NnunetPipeline:
    """nnU-Net v2: ``nnUNetDataLoader`` over ``nnUNetDatasetBlosc2`` (+ its training transforms).

    Loader settings as ``nnUNetTrainer.get_dataloaders`` sets them: oversampling 0.33
    (not probabilistic: the last ``round(0.33 * batch)`` samples of a batch are forced to
    foreground); when augmenting, the patch is loaded at the initial (rotation-padded)
    size and the transforms crop it. Without augmentation the loader is in its validation
    configuration (final patch size, no transforms). ``generate_train_batch`` runs in
    this process, as in one of nnU-Net's augmentation workers.
    """

    name = "nnU-Net v2"

    def __init__(self, folder: Path, patch: Sequence[int], batch: int) -> None:
        from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
        from nnunetv2.utilities.label_handling.label_handling import LabelManager

        patch = tuple(patch)[::-1]
        transforms, initial = nnunet_transforms(patch)
        labels = LabelManager({v: k for k, v in LABELS.items()}, regions_class_order=None)
        self.loaders = {
            augment: nnUNetDataLoader(
                nnUNetDatasetBlosc2(str(folder)),
                batch,
                size,
                patch,
                labels,
                oversample_foreground_percent=OVERSAMPLE_FG,
                sampling_probabilities=None,
                pad_sides=None,
                transforms=tr,
                probabilistic_oversampling=False,
            )
            for augment, size, tr in ((False, patch, None), (True, initial, transforms))
        }
        self.batch_size, self.initial = batch, initial

    def batch(self, size: int, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if size != self.batch_size:
            raise ValueError(f"built for batch {self.batch_size}, asked for {size}")
        out = self.loaders[augment].generate_train_batch()
        target = out["target"]
        return out["data"], target[0] if isinstance(target, list) else target


# --------------------------------------------------------------------------- timing


def interleaved_rates(
    runs: dict[str, Callable[[], int]], repeats: int, *, warmup_s: float = 2.0
) -> dict[str, tuple[list[float], list[float]]]:
    """Items per CPU-second and per wall-second of each run, per repeat.

    Runs are interleaved, their order rotated each repeat. Each callable does a fixed
    amount of work and returns how many items it made; each is first run once and then
    until `warmup_s` have passed (memory maps, caches). CPU time is this process's (user
    + system, all threads): on one thread it is the core-seconds the work took, whatever
    else shares the machine; wall time also counts waiting (for the CPU or a GPU).
    """
    names = list(runs)
    for name in names:
        start = time.perf_counter()
        runs[name]()
        while time.perf_counter() - start < warmup_s:
            runs[name]()
    rates: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            count = runs[name]()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            rates[name][0].append(count / max(cpu, 1e-9))
            rates[name][1].append(count / wall)
    return rates


def rate_table(rates: dict[str, tuple[list[float], list[float]]]) -> str:
    """Median rates per row, the spread, and the cores it takes to feed an H100 step."""
    lines = [
        f"{'pipeline':<56}{'patches/s/core':>15}{'ms/patch':>10}{'min-max':>15}"
        f"{'wall p/s':>10}{'cores for H100':>16}"
    ]
    for name, (cpu, wall) in rates.items():
        med = statistics.median(cpu)
        spread = f"{min(cpu):.1f}-{max(cpu):.1f}"
        lines.append(
            f"{name:<56}{med:>15.2f}{1e3 / med:>10.1f}{spread:>15}"
            f"{statistics.median(wall):>10.2f}{NEEDED_RATE / med:>16.1f}"
        )
    return "\n".join(lines)


def needed_line() -> str:
    """The rate an H100 training step of nnunet_default at 128^3 needs."""
    return (
        f"patches/s/core: per CPU-second of this process (1 thread); wall p/s: per second "
        f"elapsed. An H100 step of nnunet_default at 128^3 (~{STEP_S * 1e3:.0f} ms, batch "
        f"{STEP_BATCH}) needs {NEEDED_RATE:.1f} patches/s; last column: the cores (loader "
        "workers) that takes at the per-core rate, assuming linear scaling."
    )
