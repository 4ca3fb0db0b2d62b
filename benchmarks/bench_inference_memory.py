"""Peak memory of prediction: segkit streamed vs segkit non-streamed vs MONAI.

The same random-init segkit U-Net (eval mode), volume, window, overlap, ``sw_batch_size`` and
Gaussian importance map (MONAI gets segkit's map through ``roi_weight_map``); each variant runs
in a fresh process and reports its time and resident-set peak (``VmHWM`` of
``/proc/self/status``; glibc told to ``mmap`` large blocks and return freed memory at once, as
in ``tests/planner/memory_child.py``, so the resident set follows the tensors alive):

- ``segkit stream``: :func:`segkit.inference.stream.stream_predict` → labels;
- ``segkit dense``: the non-streamed path (``stream=false``): ``infer``'s whole-volume logits,
  the head's softmax, labels;
- ``MONAI``: ``sliding_window_inference`` + ``softmax`` + ``argmax``.

Scenarios: (a) 64 classes on 200×256×256 (peak vs MONAI, time vs MONAI, labels vs dense);
(b) 104 classes on 500×330×330 streamed with ``max_memory_gb=8`` (a dense float32 buffer
alone is 21 GiB); (c) peak vs volume length at 104 classes (streamed flat, dense growing),
drawn to ``docs/img/inference_memory.png`` when matplotlib is installed.

    python benchmarks/bench_inference_memory.py           # 27 min on 2 cores at load 10
    python benchmarks/bench_inference_memory.py --quick                   # ~3 min
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "0",
    "MALLOC_ARENA_MAX": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
GiB = 2**30


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) * 1024
    raise KeyError(key)


def child(case: dict) -> dict:
    """One variant in this process: time, absolute and above-baseline peak; labels saved."""
    import numpy as np
    import torch

    from segkit.inference.engine import InferenceSettings, gaussian_importance, infer
    from segkit.inference.outputs import SOFTMAX
    from segkit.inference.stream import ModelRun, probabilities_in_blocks, stream_predict
    from segkit.nn import UNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    k, window = case["classes"], tuple(case["window"])
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=k, depth=3, channels=case["channels"]
    ).eval()
    settings = InferenceSettings(
        mode="sliding", overlap=case["overlap"], sw_batch_size=case["batch"]
    )
    run = ModelRun(net, window, settings)
    variant = case["variant"]

    def go(x):
        if variant == "stream":
            res = stream_predict(
                [run],
                x,
                SOFTMAX,
                classes=k,
                max_memory_gb=case.get("budget"),
                accumulate=case.get("accumulate", "auto"),
            )
            return res.labels, res.plan
        if variant == "dense":
            logits, _ = infer(net, x, patch_size=window, settings=settings)
            probs = probabilities_in_blocks(logits[0], SOFTMAX)
            del logits
            return SOFTMAX.labels(probs, dim=0).to(torch.uint8), None
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            out = sliding_window_inference(
                x,
                window,
                case["batch"],
                net,
                overlap=case["overlap"],
                mode="gaussian",
                roi_weight_map=gaussian_importance(window),
            )
            probs = torch.softmax(out, dim=1)
            del out
            return probs.argmax(dim=1)[0].to(torch.uint8), None

    gen = torch.Generator().manual_seed(1)
    go(torch.randn(1, 1, *(min(2 * w, s) for w, s in zip(window, case["size"])), generator=gen))
    x = torch.randn(1, 1, *case["size"], generator=gen)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    start = time.perf_counter()
    labels, plan = go(x)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    if case.get("labels"):
        np.save(case["labels"], labels.numpy())
    return {
        "seconds": seconds,
        "peak": peak,
        "above": peak - base,
        "plan": plan.describe() if plan else "",
        "estimate": plan.estimate if plan else 0,
    }


def run(case: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(case)],
        env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1])


def _gb(n: int) -> str:
    return f"{n / GiB:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller volumes (a few minutes)")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--skip", nargs="*", default=[], help="scenarios to skip: a b c")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    import numpy as np

    q = args.quick
    common = {"channels": args.channels, "window": [64, 64, 64], "batch": 2}
    print(f"load: {os.getloadavg()}; {os.cpu_count()} CPUs; 1 torch thread per process")
    tmp = Path(tempfile.mkdtemp(prefix="segkit-bench-mem-"))
    if "a" not in args.skip:
        size = [100, 128, 128] if q else [200, 256, 256]
        a = {**common, "classes": 16 if q else 64, "size": size, "overlap": 0.5}
        rows = {}
        for variant in ("stream", "dense", "monai"):
            rows[variant] = run({**a, "variant": variant, "labels": str(tmp / f"{variant}.npy")})
        labels = {v: np.load(tmp / f"{v}.npy") for v in rows}
        same = bool((labels["stream"] == labels["dense"]).all())
        agree = float((labels["stream"] == labels["monai"]).mean())
        print(
            f"\n(a) {a['classes']} classes on {'×'.join(map(str, size))}, window 64³, overlap "
            f"0.5, sw_batch_size 2, UNet depth 3 channels {args.channels}, load "
            f"{os.getloadavg()[0]:.1f}"
        )
        print(
            "| variant | peak RSS GiB | above baseline GiB | time s | peak vs MONAI "
            "| above baseline vs MONAI | time vs MONAI |"
        )
        print("|---|---|---|---|---|---|---|")
        m = rows["monai"]
        for v, r in rows.items():
            print(
                f"| {v} | {_gb(r['peak'])} | {_gb(r['above'])} | {r['seconds']:.1f} | "
                f"{r['peak'] / m['peak']:.2f}× | {r['above'] / m['above']:.2f}× | "
                f"{r['seconds'] / m['seconds']:.2f}× |"
            )
        print(f"streamed labels identical to non-streamed: {same}; agree with MONAI's: {agree:.4%}")
        print(f"stream plan: {rows['stream']['plan']}")
    if "b" not in args.skip:
        size = [250, 165, 165] if q else [500, 330, 330]
        b = {
            **common,
            "classes": 104,
            "size": size,
            "overlap": 0.0,
            "budget": 8,
            "variant": "stream",
        }
        r = run(b)
        dense = 104 * np.prod(size) * 4
        print(
            f"\n(b) 104 classes on {'×'.join(map(str, size))} (dense float32 logits "
            f"{dense / GiB:.1f} GiB), overlap 0, max_memory_gb=8, load {os.getloadavg()[0]:.1f}: "
            f"peak {_gb(r['peak'])} GiB, {r['seconds']:.0f} s; {r['plan']}"
        )
    if "c" not in args.skip:
        plane = [96, 96]
        lengths = [64, 128, 256] if q else [64, 128, 256, 512]
        c = {**common, "classes": 104, "overlap": 0.5}
        curve = {"stream": [], "dense": []}
        for n in lengths:
            curve["stream"].append(run({**c, "size": [n, *plane], "variant": "stream"})["peak"])
            if n <= 256:
                curve["dense"].append(run({**c, "size": [n, *plane], "variant": "dense"})["peak"])
        print(
            f"\n(c) peak RSS GiB vs length, 104 classes, plane 96×96, load {os.getloadavg()[0]:.1f}"
        )
        print("| length | " + " | ".join(map(str, lengths)) + " |")
        print("|---" * (len(lengths) + 1) + "|")
        for v, peaks in curve.items():
            cells = [_gb(p) for p in peaks] + ["—"] * (len(lengths) - len(peaks))
            print(f"| segkit {v} | " + " | ".join(cells) + " |")
        _plot(lengths, curve)


def _plot(lengths, curve) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for v, peaks in curve.items():
        ax.plot(lengths[: len(peaks)], [p / GiB for p in peaks], "o-", label=f"segkit {v}")
    ax.set_xlabel("volume length (voxels), plane 96×96, 104 classes")
    ax.set_ylabel("peak RSS (GiB)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = ROOT / "docs" / "img" / "inference_memory.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
