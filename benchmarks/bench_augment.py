"""Augmentation per CPU core: segkit's BatchAugment vs MONAI vs batchgeneratorsv2.

Same CT-like patches, same probabilities and ranges (conf/data/msd.yaml's
``data.augment``, which follows nnU-Net's defaults); every row runs in this process on
one thread, so a rate is patches per second per CPU core. Rows:

- segkit ``BatchAugment`` on a batch of --batch patches with the uint8 labels its loader
  yields (on CPU; with --device cuda also on the GPU, where it is meant to run: that row
  is per GPU, not per core);
- MONAI: RandFlipd x3, RandRotated, RandZoomd, RandGaussianNoised,
  RandGaussianSmoothd, RandScaleIntensityd, RandScaleIntensityFixedMeand,
  RandAdjustContrastd, per patch;
- nnU-Net v2: ``nnUNetTrainer.get_training_transforms`` (batchgeneratorsv2), per patch,
  fed the rotation-padded patch its loader reads; it also simulates low resolution,
  applies an inverted gamma and builds deep-supervision targets;
- batchgeneratorsv2 restricted to segkit's transform set (same inputs as nnU-Net's row).

    benchenv/bin/python benchmarks/bench_augment.py                # 64^3, about a minute
    benchenv/bin/python benchmarks/bench_augment.py --full         # 128^3, ~2.5 min
    benchenv/bin/python benchmarks/bench_augment.py --full --device cuda   # adds the GPU row
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _pipelines as pl  # noqa: E402

from segkit.data import BatchAugment  # noqa: E402


def _patches(shape, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` CT-like patches ``(count, 1, *shape)``, windowed and scaled, with labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(count):
        hu, lab = pl.ct_volume(shape, rng)
        images.append((np.clip(hu, -200, 300).astype(np.float32) - 50.0) / 100.0)
        labels.append(lab)
    return np.stack(images)[:, None], np.stack(labels)[:, None]


def _centre(array: np.ndarray, patch) -> np.ndarray:
    lo = [(s - p) // 2 for s, p in zip(array.shape[-3:], patch)]
    return array[(..., *(slice(a, a + p) for a, p in zip(lo, patch)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="128^3 patches")
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=6, help="batches per row and repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per row first")
    parser.add_argument("--device", default="cpu", help="also run segkit on this device")
    args = parser.parse_args()
    if args.full:
        args.patch = [128, 128, 128]
    pl.one_thread()
    np.random.seed(0)  # batchgeneratorsv2 draws from the global generators
    torch.manual_seed(0)
    patch = tuple(args.patch)
    start_load = pl.machine_line()

    try:
        _, initial = pl.nnunet_transforms(patch)
    except ImportError as err:
        print(f"nnU-Net v2 not importable ({err}); install with:\n  {pl.INSTALL}")
        initial = None
    big_img, big_lab = _patches(initial or patch, args.batch)
    img, lab = _centre(big_img, patch).copy(), _centre(big_lab, patch).copy()

    rows = {}
    segkit_aug = BatchAugment(**pl.augment_settings())
    devices = ["cpu"] + ([args.device] if args.device != "cpu" else [])
    for device in devices:
        gen = torch.Generator(device).manual_seed(0)
        x = torch.from_numpy(img).to(device)
        y = torch.from_numpy(lab).to(device)  # uint8, as segkit's PatchDataset yields it

        def segkit_run(x=x, y=y, gen=gen, device=device) -> int:
            for _ in range(args.batches):
                segkit_aug(x, y, generator=gen)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return args.batches * args.batch

        rows[f"segkit BatchAugment, batch {args.batch}, {device}"] = segkit_run

    try:
        from monai import transforms as mt

        monai_aug = mt.Compose(pl.monai_random_transforms())
        monai_aug.set_random_state(seed=0)
        monai_items = [
            {"image": torch.from_numpy(img[b]), "label": torch.from_numpy(lab[b]).float()}
            for b in range(args.batch)
        ]

        def monai_run() -> int:
            for _ in range(args.batches):
                for item in monai_items:
                    monai_aug(dict(item))
            return args.batches * args.batch

        rows["MONAI transforms, per patch"] = monai_run
    except ImportError as err:
        print(f"MONAI not importable ({err}); install with:\n  {pl.INSTALL}")

    if initial is not None:
        nn_items = [
            (torch.from_numpy(big_img[b]), torch.from_numpy(big_lab[b].astype(np.int16)))
            for b in range(args.batch)
        ]
        for label, matched in (
            ("nnU-Net get_training_transforms", False),
            ("batchgeneratorsv2, segkit's transform set", True),
        ):
            transforms, _ = pl.nnunet_transforms(patch, matched=matched)

            def bg_run(transforms=transforms) -> int:
                for _ in range(args.batches):
                    for image, seg in nn_items:
                        transforms(image=image.clone(), segmentation=seg.clone())
                return args.batches * args.batch

            rows[f"{label}, per patch"] = bg_run

    rates = pl.interleaved_rates(rows, args.repeats, warmup_s=args.warmup)
    size = "x".join(map(str, patch))
    print(
        f"patch {size} (1 channel), {args.batches} batches of {args.batch} per row and repeat, "
        f"medians of {args.repeats} interleaved repeats, 1 CPU thread"
    )
    if initial is not None:
        print(f"batchgeneratorsv2 rows get the {'x'.join(map(str, initial))} patch nnU-Net loads")
    print(f"start: {start_load}\nend:   {pl.machine_line()}")
    print(pl.rate_table(rates))
    print(pl.needed_line())
    if len(devices) > 1:
        print(f"the {args.device} row is per GPU: its time adds to the training step")


if __name__ == "__main__":
    main()
