"""Patch loading: memory-mapped preprocessed cache vs decompressing NIfTI per sample.

Usage: python benchmarks/bench_loader.py [--root DIR] [--samples N] [--repeats R]

Without --root the synthetic demo dataset is generated in a temporary directory.
Both paths draw the same random patch (same case, same corner); the naive one
has to read and decompress the case's .nii.gz image and label for every sample,
and does no resampling or normalisation (so the gap is a lower bound).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from segkit.data import PatchDataset, make_demo, preprocess_dataset, read_dataset


def _naive_patch(files: dict, case_id: str, lower, patch) -> tuple[np.ndarray, np.ndarray]:
    image_path, label_path = files[case_id]
    image = np.asarray(nib.load(str(image_path)).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(label_path)).dataobj)
    sl = tuple(slice(max(lo, 0), max(lo, 0) + p) for lo, p in zip(lower, patch))
    return image[sl], label[sl].astype(np.int64)


def _rate(fn, count: int, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            fn(i)
        rates.append(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 48, 32])
    parser.add_argument("--samples", type=int, default=300, help="cached samples per repeat")
    parser.add_argument("--naive-samples", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or make_demo(Path(tmp) / "demo")
        prep = preprocess_dataset(root, num_workers=2, progress=False)
        files = {c.case_id: (c.images[0], c.label) for c in read_dataset(root).training}
        ds = PatchDataset(
            cases_dir=prep.cases_dir,
            case_ids=prep.case_ids,
            patch_size=args.patch,
            num_samples=args.samples,
        )
        ds.sample_patch(0)  # open the first memmap outside the timing

        def naive(i: int) -> None:
            _, _, info = ds.sample_patch(i)  # same draw as the cached path
            _naive_patch(files, info["case"], info["lower"], args.patch)

        cached = _rate(ds.sample_patch, args.samples, args.repeats)
        baseline = _rate(naive, args.naive_samples, args.repeats)

    med_c, med_n = statistics.median(cached), statistics.median(baseline)
    print(
        f"patch {args.patch}, {len(files)} cases, medians over {args.repeats} repeats, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus"
    )
    print(f"{'loader':<34}{'patches/s':>12}{'ms/patch':>11}{'speed-up':>10}")
    print(
        f"{'nibabel .nii.gz per sample (naive)':<34}{med_n:>12.1f}{1e3 / med_n:>11.2f}{1.0:>9.1f}x"
    )
    print(
        f"{'segkit cache (np.load mmap)':<34}{med_c:>12.1f}{1e3 / med_c:>11.2f}"
        f"{med_c / med_n:>9.1f}x"
    )


if __name__ == "__main__":
    main()
