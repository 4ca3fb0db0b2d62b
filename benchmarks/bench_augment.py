"""Augmentation: one batched call on the device vs per-sample calls on CPU.

Usage: python benchmarks/bench_augment.py [--batch B] [--patch X Y Z] [--repeats R]

Every transform is switched on (probability 1) so both paths do the same work;
the batched path runs on cuda when available, else on CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from segkit.data import BatchAugment

ALL_ON = {
    "p_flip": 1.0,
    "p_rotate": 1.0,
    "p_scale": 1.0,
    "p_noise": 1.0,
    "p_blur": 1.0,
    "p_brightness": 1.0,
    "p_contrast": 1.0,
    "p_gamma": 1.0,
}


def _time(fn, repeats: int, device: torch.device) -> list[float]:
    fn()  # warm-up (kernel selection, allocations)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--patch", type=int, nargs="+", default=[48, 48, 32])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    aug = BatchAugment(**ALL_ON)
    image = torch.randn(args.batch, args.channels, *args.patch)
    label = torch.randint(0, 4, (args.batch, 1, *args.patch))
    image_dev, label_dev = image.to(device), label.to(device)

    def batched() -> None:
        aug(image_dev, label_dev)

    def per_sample() -> None:
        for b in range(args.batch):
            aug(image[b : b + 1], label[b : b + 1])

    t_batch = statistics.median(_time(batched, args.repeats, device))
    t_loop = statistics.median(_time(per_sample, args.repeats, torch.device("cpu")))
    threads = torch.get_num_threads()
    print(
        f"batch {args.batch} x {args.channels} x {args.patch}, all transforms on, "
        f"median of {args.repeats}, torch threads {threads}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus"
    )
    print(f"{'augmentation':<36}{'ms/batch':>10}{'samples/s':>11}{'speed-up':>10}")
    print(
        f"{'per-sample loop on cpu':<36}{t_loop * 1e3:>10.1f}{args.batch / t_loop:>11.1f}"
        f"{1.0:>9.1f}x"
    )
    print(
        f"{'batched BatchAugment on ' + device.type:<36}{t_batch * 1e3:>10.1f}"
        f"{args.batch / t_batch:>11.1f}{t_loop / t_batch:>9.1f}x"
    )


if __name__ == "__main__":
    main()
