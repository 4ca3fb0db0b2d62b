"""Training input per CPU core: segkit vs MONAI vs nnU-Net v2, side by side.

Each tool gets the same synthetic CT-like cases (Decathlon layout, int16 .nii.gz) in
the form it trains from: segkit preprocesses them into its mmap ``.npy`` cache; MONAI
loads the NIfTI files into a ``CacheDataset``; nnU-Net gets the same normalised arrays
written by its own blosc2 writer. Rows, at the same patch size, batch and foreground
oversampling (0.33):

- load only: segkit ``PatchDataset``; MONAI ``CacheDataset`` + ``RandCropByPosNegLabeld``;
  nnU-Net ``nnUNetDataLoader`` (validation configuration: final patch, no transforms);
- load + augment: segkit + ``BatchAugment`` with conf/data/msd.yaml's settings (on CPU,
  or on --device cuda); MONAI + its flips, rotation, zoom, noise, blur, brightness,
  contrast and gamma at the same probabilities and ranges; nnU-Net's training loader
  (initial patch size) with the transforms ``nnUNetTrainer.get_training_transforms``
  builds. See benchmarks/_pipelines.py for each pipeline.

Everything runs in this process on one thread (torch, OpenMP/BLAS, blosc2), so a rate
is patches per second per CPU core; repeats are interleaved and medians printed.

    # anchors in a benchmark environment only (never segkit dependencies), see README
    benchenv/bin/python benchmarks/bench_loader.py            # small, about a minute
    benchenv/bin/python benchmarks/bench_loader.py --full     # 4 x 512x512x120, 128^3: ~3 min
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _pipelines as pl  # noqa: E402


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="4 cases 512x512x120, 128^3")
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 64])
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=6, help="batches per row and repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per row first")
    parser.add_argument("--device", default="cpu", help="segkit augmentation device")
    parser.add_argument("--root", type=Path, default=None, help="keep data here (reused)")
    args = parser.parse_args()
    if args.full:
        args.shape, args.patch, args.cases = [512, 512, 120], [128, 128, 128], 4
    pl.one_thread()
    np.random.seed(0)  # nnU-Net and batchgeneratorsv2 draw from the global generators
    torch.manual_seed(0)

    from segkit.data import preprocess_dataset

    tmp = None
    if args.root is None:
        tmp = tempfile.mkdtemp(prefix="bench_loader_")
    base = args.root or Path(tmp)
    tag = f"ct_{args.cases}x{'x'.join(map(str, args.shape))}"
    root = base / tag
    try:
        t0 = time.perf_counter()
        if not (root / "dataset.json").is_file():
            pl.write_ct_dataset(root, num_cases=args.cases, shape=args.shape)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        prep = preprocess_dataset(root, num_workers=2, progress=False)
        t_segkit = time.perf_counter() - t0
        pipes = {"segkit": pl.SegkitPipeline(prep, args.patch, device=args.device)}
        setup = [
            f"write {args.cases} NIfTI cases {t_write:.0f} s",
            f"segkit cache {t_segkit:.0f} s",
        ]
        sizes = [f"segkit cache {_dir_bytes(prep.cases_dir) / 2**30:.2f} GiB on disk (mmap)"]
        try:
            t0 = time.perf_counter()
            pipes["MONAI"] = pl.MonaiPipeline(root, args.patch, workers=2)
            setup.append(f"MONAI CacheDataset {time.perf_counter() - t0:.0f} s (2 workers)")
            sizes.append(f"MONAI cache {pipes['MONAI'].cached_bytes() / 2**30:.2f} GiB in RAM")
        except ImportError as err:
            print(f"MONAI not importable ({err}); install with:\n  {pl.INSTALL}")
        try:
            nn_dir = base / f"{tag}_nnunet_{'x'.join(map(str, args.patch))}"
            t0 = time.perf_counter()
            if not nn_dir.is_dir():
                pl.write_nnunet_preprocessed(prep, nn_dir, args.patch)
            setup.append(f"nnU-Net blosc2 files {time.perf_counter() - t0:.0f} s")
            sizes.append(f"nnU-Net blosc2 {_dir_bytes(nn_dir) / 2**30:.2f} GiB on disk")
            pipes["nnU-Net v2"] = pl.NnunetPipeline(nn_dir, args.patch, args.batch)
        except ImportError as err:
            print(f"nnU-Net v2 not importable ({err}); install with:\n  {pl.INSTALL}")

        def run(pipe, augment: bool):
            def fn() -> int:
                for _ in range(args.batches):
                    pipe.batch(args.batch, augment)
                return args.batches * args.batch

            return fn

        aug_where = {"segkit": f"BatchAugment on {args.device}"}
        runs = {}
        for augment in (False, True):
            for name, pipe in pipes.items():
                what = "load + " + aug_where.get(name, "augment") if augment else "load only"
                runs[f"{name}: {what}"] = run(pipe, augment)
        rates = pl.interleaved_rates(runs, args.repeats, warmup_s=args.warmup)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"{args.cases} cases {'x'.join(map(str, args.shape))}, patch "
        f"{'x'.join(map(str, args.patch))}, batch {args.batch}, {args.batches} batches per row "
        f"and repeat, medians of {args.repeats} interleaved repeats, 1 thread per pipeline"
    )
    print(pl.machine_line())
    print("setup: " + "; ".join(setup))
    print("footprint: " + "; ".join(sizes))
    if "nnU-Net v2" in pipes:
        initial = "x".join(map(str, pipes["nnU-Net v2"].initial[::-1]))
        print(f"nnU-Net training loader reads {initial} patches (rotation-padded), then crops")
    print(pl.rate_table(rates))
    print(pl.needed_line())
    if args.device != "cpu":
        print(
            f"segkit's augment row includes {args.device} time: its CPU cost is the "
            "load-only row; the GPU time is added to the training step."
        )


if __name__ == "__main__":
    main()
