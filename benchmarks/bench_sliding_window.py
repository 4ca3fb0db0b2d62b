"""segkit's sliding-window inference vs MONAI's ``sliding_window_inference``.

Same network (a segkit UNet in eval mode), same volume, window, overlap,
``sw_batch_size`` and Gaussian importance map (MONAI gets segkit's map through
``roi_weight_map`` so the outputs are comparable to float precision; MONAI with
its own Gaussian is reported too). Both run under ``torch.inference_mode``.
Repeats are interleaved so load from other processes hits all variants alike;
medians are printed.

    pip install --no-deps monai      # benchmark environment only
    python benchmarks/bench_sliding_window.py
    python benchmarks/bench_sliding_window.py --size 161 161 121 --window 65 65 49 --profile
    python benchmarks/bench_sliding_window.py --device cuda --size 256 256 192 --window 128 128 128
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segkit.defaults import DEFAULT_OVERLAP  # noqa: E402
from segkit.inference.engine.windows import importance_map  # noqa: E402
from segkit.nn import UNet  # noqa: E402
from tests.inference.engine_logits import engine_logits  # noqa: E402


def _time(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[97, 97, 73])
    parser.add_argument("--window", type=int, nargs=3, default=[33, 33, 25])
    parser.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP)
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--norm", default="instance")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--profile", action="store_true", help="print top ops of each")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        sliding_window_inference = None
        print("MONAI not importable: pip install --no-deps monai (segkit rows only)")

    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=4,
        depth=args.depth,
        channels=args.channels,
        norm=args.norm,
    ).eval()
    net.to(args.device)
    x = torch.randn(1, 1, *args.size, device=args.device)
    window = tuple(args.window)
    weight = importance_map(args.size, window, args.overlap).to(args.device)
    kw = {"overlap": args.overlap, "sw_batch_size": args.sw_batch_size}

    variants: dict[str, Callable[[], torch.Tensor]] = {
        # the engine's tiles assembled into the volume's logits (what MONAI returns)
        "segkit sliding": lambda: engine_logits(net, x, window, mode="sliding", **kw),
        "segkit whole volume": lambda: engine_logits(net, x, window, mode="whole", **kw),
    }
    if sliding_window_inference is not None:

        def monai(image: torch.Tensor, weight_map: torch.Tensor | None) -> torch.Tensor:
            with torch.inference_mode():
                return sliding_window_inference(
                    image,
                    window,
                    args.sw_batch_size,
                    net,
                    overlap=args.overlap,
                    mode="gaussian",
                    roi_weight_map=weight_map,
                )

        variants["MONAI sliding (segkit's Gaussian map)"] = lambda: monai(x, weight)
        variants["MONAI sliding (own Gaussian)"] = lambda: monai(x, None)
        cl = x.contiguous(memory_format=torch.channels_last_3d)
        variants["MONAI sliding, channels-last input"] = lambda: monai(cl, weight)

    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs: dict[str, torch.Tensor] = {}
    for name, fn in variants.items():  # warm-up (oneDNN primitive caches)
        outputs[name] = fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t, _ = _time(fn)
            times[name].append(t)

    ref = outputs["segkit sliding"]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"volume {'x'.join(map(str, args.size))}, window {'x'.join(map(str, window))}, "
        f"overlap {args.overlap}, sw_batch_size {args.sw_batch_size}, UNet depth {args.depth} "
        f"channels {args.channels} norm {args.norm}; {args.repeats} repeats (median)\n"
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    )
    print(f"{'variant':40s} {'median s':>9s} {'min s':>7s} {'vs segkit':>10s} {'max|diff|':>10s}")
    for name in variants:
        diff = (outputs[name] - ref).abs().max().item()
        print(
            f"{name:40s} {med[name]:9.3f} {min(times[name]):7.3f} "
            f"{med[name] / med['segkit sliding']:9.2f}x {diff:10.2e}"
        )
    if "MONAI sliding (segkit's Gaussian map)" in med:
        ratio = med["MONAI sliding (segkit's Gaussian map)"] / med["segkit sliding"]
        print(f"segkit sliding window is {ratio:.2f}x faster than MONAI at equal output")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name in ("segkit sliding", "MONAI sliding (segkit's Gaussian map)"):
            if name not in variants:
                continue
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                variants[name]()
            print(f"\n== {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
