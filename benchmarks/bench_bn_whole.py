"""How far a whole-volume pass of a batch-norm U-Net is from the sliding window's answer.

With batch norm in eval mode every window and the whole volume see the same running
statistics, so ``auto`` may run the whole volume (``segkit.inference.engine.settings.decide``).
The answers are still not identical: a window sees zero padding at its borders where the
whole volume sees real voxels, and a window that starts at an offset that is not a
multiple of the network's total stride samples its coarse levels on another grid. This
script measures the gap on odd sizes: a batch-norm U-Net trained for a few steps here
(so its running statistics and weights are not those of a fresh network) or a checkpoint
given with ``--ckpt``, whole volume vs Gaussian sliding window of the training patch at
overlap 0.5 (what ``mode=sliding`` runs), per size: the largest logit and probability
difference, the fraction of voxels whose label (argmax) agrees, and each mode's mean
foreground Dice against the synthetic volumes' own labels (a smoothed-intensity threshold,
what the network is trained on), to say which answer is the better one. Column "≡ patch":
the size equals the patch plus a multiple of the network's total stride on every axis, so
every level of the whole volume has the parity (output_padding, crop, interpolation
ratio) of the training patches; ``decide`` runs whole only there.

    python benchmarks/bench_bn_whole.py
    python benchmarks/bench_bn_whole.py --upsample interpolate
    python benchmarks/bench_bn_whole.py --ckpt outputs/<run>/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segkit.defaults import DEFAULT_OVERLAP  # noqa: E402
from segkit.inference.engine.extent import extent_dependence  # noqa: E402
from segkit.nn import UNet  # noqa: E402
from tests.inference.engine_logits import engine_logits  # noqa: E402

SIZES = ("64x64x48", "72x56x40", "65x63x47", "81x77x53", "97x71x59")


def _volume(size: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Smooth blobs on noise, z-scored: not stationary, as a scan is not."""
    field = torch.randn(1, 1, *size, generator=gen)
    smooth = F.avg_pool3d(field, 7, stride=1, padding=3, count_include_pad=False)
    x = 0.5 * field + 4.0 * smooth
    return (x - x.mean()) / x.std()


def _labels(x: torch.Tensor) -> torch.Tensor:
    smooth = F.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False)
    return (smooth[:, 0] > 0.2).long() + (smooth[:, 0] > 0.5).long()  # ~21 % and 8 %


def _dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean foreground Dice of two label maps (classes 1 and 2)."""
    scores = []
    for k in (1, 2):
        p, t = pred == k, truth == k
        denom = int(p.sum() + t.sum())
        scores.append(2 * int((p & t).sum()) / denom if denom else 1.0)
    return sum(scores) / len(scores)


def _trained(args: argparse.Namespace) -> tuple[UNet, tuple[int, ...]]:
    torch.manual_seed(args.seed)
    patch = tuple(args.patch)
    net = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        depth=args.depth,
        channels=args.channels,
        norm="batch",
        upsample=args.upsample,
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(args.seed)
    net.train()
    for _ in range(args.train_steps):
        x = torch.cat([_volume(patch, gen) for _ in range(2)])
        loss = F.cross_entropy(net(x), _labels(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), patch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="e.g. 65x63x47")
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 32, 24])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--upsample", default="transposed", help="transposed | interpolate")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP)
    parser.add_argument("--ckpt", default=None, help="a batch-norm segkit checkpoint instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    if args.ckpt:
        from segkit.inference.predict.checkpoint import load_model

        loaded = load_model(args.ckpt)
        net, patch = loaded.net, loaded.patch_size
        what = f"checkpoint {args.ckpt}"
    else:
        net, patch = _trained(args)
        what = (
            f"U-Net depth {args.depth}, {args.channels} channels, batch norm, "
            f"{args.upsample} upsampling, trained {args.train_steps} Adam steps (seed {args.seed})"
        )
    why = extent_dependence(net)
    if why is not None:
        sys.exit(f"not a network auto would run whole: {why}")
    print(f"command: python {shlex.join(['benchmarks/bench_bn_whole.py', *sys.argv[1:]])}")
    print(
        f"machine: {platform.machine()} {platform.system()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"network: {what}; patch {'×'.join(map(str, patch))}; overlap {args.overlap:g}")
    header = (
        f"{'size':>10s} {'≡ patch':>7s} {'windows':>7s} {'max|Δlogit|':>11s} {'mean|Δlogit|':>12s} "
        f"{'logit std':>9s} {'max|Δprob|':>10s} {'labels agree':>12s} {'differ':>6s} "
        f"{'Dice whole':>10s} {'Dice sliding':>12s}"
    )
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(args.seed + 1)
    total = [math.prod(axis) for axis in zip(*net.spec.strides)]
    worst = {True: 0.0, False: 0.0}
    for text in args.sizes:
        size = tuple(int(v) for v in text.lower().split("x"))
        x = _volume(size, gen)
        whole = engine_logits(net, x, patch, mode="whole")
        sliding = engine_logits(net, x, patch, mode="sliding", overlap=args.overlap)
        diff = (whole - sliding).abs()
        dprob = (whole.softmax(1) - sliding.softmax(1)).abs().max().item()
        same = whole.argmax(1) == sliding.argmax(1)
        truth = _labels(x)
        dice_w, dice_s = _dice(whole.argmax(1), truth), _dice(sliding.argmax(1), truth)
        windows = 1
        for n, w in zip(size, patch):
            step = max(1, int(w * (1 - args.overlap)))
            windows *= 1 if n <= w else -(-(n - w) // step) + 1
        phase = all((n - p) % t == 0 for n, p, t in zip(size, patch, total))
        worst[phase] = max(worst[phase], diff.max().item())
        print(
            f"{'×'.join(map(str, size)):>10s} {'yes' if phase else 'no':>7s} {windows:>7d} "
            f"{diff.max().item():>11.2e} "
            f"{diff.mean().item():>12.2e} {whole.std().item():>9.3f} {dprob:>10.2e} "
            f"{100 * same.float().mean().item():>11.4f}% {int((~same).sum()):>6d} "
            f"{dice_w:>10.4f} {dice_s:>12.4f}"
        )
    stride = "×".join(map(str, total))
    print(
        f"largest max|Δlogit|: {worst[True]:.2e} where size ≡ patch (mod the total stride "
        f"{stride}), {worst[False]:.2e} elsewhere"
    )
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
