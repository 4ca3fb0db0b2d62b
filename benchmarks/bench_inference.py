"""Accuracy and time of every inference mode for a trained checkpoint, with MONAI as anchor.

For the checkpoint of ``python train.py`` (its run directory), every validation case of
that run is preprocessed as ``segkit predict`` does, predicted in each mode, mapped back
to its original grid and scored against its label file as ``segkit evaluate`` does (mean
foreground Dice: per class over cases, then over classes). Seconds per case time the
network part only (preprocessing and inversion are the same for every row). Rows:

- ``whole``: the exact-shape network once on the whole volume;
- ``sliding`` at overlap 0 / 0.25 / 0.5 with the training patch as window;
- ``sliding`` with windows 1.5× and 2× the patch (overlap 0.5);
- what the end-of-training calibration stored in the checkpoint (``segkit predict``'s
  default);
- MONAI's ``sliding_window_inference`` (Gaussian, sigma 1/8, same window, overlap and
  ``sw_batch_size``) on the same network and preprocessed volumes.

Rows are interleaved per case and repeated; medians are printed.

    pip install --no-deps monai==1.6.1      # benchmark environment only (optional)
    python train.py hydra.run.dir=outputs/demo_run
    python benchmarks/bench_inference.py --run outputs/demo_run --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segkit.data.io import read_nifti  # noqa: E402
from segkit.data.layouts import read_dataset  # noqa: E402
from segkit.inference.engine.settings import InferenceSettings  # noqa: E402
from segkit.inference.engine.windows import SIGMA_SCALE, importance_map  # noqa: E402
from segkit.inference.metrics.dice import case_dice, mean_dice  # noqa: E402
from segkit.inference.predict.checkpoint import load_model  # noqa: E402
from segkit.table import format_table  # noqa: E402
from tests.inference.engine_logits import engine_logits  # noqa: E402


def _newest_run() -> Path:
    runs = sorted(Path("outputs").glob("*/runs/*/metrics.json"), key=os.path.getmtime)
    if not runs:
        raise SystemExit("no run found: python train.py first, or give --run RUN_DIR")
    return runs[-1].parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="run directory of train.py")
    parser.add_argument("--ckpt", default="best.ckpt", help="checkpoint in RUN/checkpoints/")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--no-monai", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = args.run or _newest_run()
    metrics = json.loads((run / "metrics.json").read_text())
    model = load_model(run / "checkpoints" / args.ckpt)
    net, pre, patch = model.net, model.preprocessor, tuple(model.patch_size)
    dataset = read_dataset(Path(metrics["data_root"]))
    files = {c.case_id: c for c in dataset.training}
    cases = [files[c] for c in metrics["validation_cases"]]
    k = model.spec.out_channels

    sliding_window_inference = None
    if not args.no_monai:
        try:
            from monai.inferers import sliding_window_inference
        except ImportError:
            print("MONAI not importable: pip install --no-deps monai==1.6.1 (segkit rows only)")

    bs = args.sw_batch_size
    variants: dict[str, object] = {
        "whole volume": InferenceSettings(mode="whole"),
        "sliding, overlap 0": InferenceSettings(mode="sliding", overlap=0.0, sw_batch_size=bs),
        "sliding, overlap 0.25": InferenceSettings(mode="sliding", overlap=0.25, sw_batch_size=bs),
        "sliding, overlap 0.5": InferenceSettings(mode="sliding", overlap=0.5, sw_batch_size=bs),
        "sliding, window 1.5×, overlap 0.5": InferenceSettings(
            mode="sliding", overlap=0.5, window_scale=1.5, sw_batch_size=bs
        ),
        "sliding, window 2×, overlap 0.5": InferenceSettings(
            mode="sliding", overlap=0.5, window_scale=2.0, sw_batch_size=bs
        ),
    }
    cal = model.calibration
    if cal:
        name = (
            f"calibrated (predict default): overlap {cal['overlap']:g}, "
            f"window {cal['window_scale']:g}×"
        )
        variants[name] = InferenceSettings(
            mode="sliding",
            overlap=cal["overlap"],
            window_scale=cal["window_scale"],
            sw_batch_size=bs,
        )

    if sliding_window_inference is not None:
        for overlap in (0.0, 0.25, 0.5):
            variants[f"MONAI sliding_window_inference, overlap {overlap:g}"] = ("monai", overlap)
        variants["MONAI, overlap 0.5, given segkit's Gaussian map"] = ("monai-map", 0.5)

    def run_variant(variant, x: torch.Tensor) -> torch.Tensor:
        if isinstance(variant, InferenceSettings):
            return engine_logits(net, x, patch, variant)
        kind, overlap = variant
        weights = {}
        if kind == "monai-map":  # isolates the window loop from the choice of Gaussian
            weights["roi_weight_map"] = importance_map(x.shape[2:], patch, overlap)

        with torch.inference_mode():
            return sliding_window_inference(
                x,
                patch,
                bs,
                net,
                overlap=overlap,
                mode="gaussian",
                sigma_scale=SIGMA_SCALE,
                **weights,
            )

    seconds = {v: [] for v in variants}
    dice = {v: [] for v in variants}
    for case in cases:
        image, props = pre.preprocess_image(case.images)
        label = read_nifti(case.label, kind="label").data
        x = torch.from_numpy(image)[None]
        for rep in range(args.repeats):
            for name, variant in variants.items():
                start = time.perf_counter()
                logits = run_variant(variant, x)
                seconds[name].append(time.perf_counter() - start)
                if rep == 0:
                    seg = logits.argmax(1)[0].to(torch.int16).numpy()
                    back = pre.invert(seg, props)
                    dice[name].append(
                        case_dice(torch.from_numpy(back), torch.from_numpy(np.asarray(label)), k)
                    )
    base = statistics.median(seconds["sliding, overlap 0.5"])
    rows = []
    for name in variants:
        per_class, mean = mean_dice(torch.stack(dice[name]))
        s = statistics.median(seconds[name])
        rows.append(
            (
                name,
                f"{mean:.4f}",
                " / ".join(f"{v:.3f}" for v in per_class.tolist()),
                f"{s:.2f}",
                f"{base / s:.2f}×",
            )
        )
    print(
        f"checkpoint {run / 'checkpoints' / args.ckpt}: {len(cases)} validation case(s) "
        f"{', '.join(c.case_id for c in cases)}; patch {'×'.join(map(str, patch))}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.machine()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        format_table(
            (
                "inference",
                "mean Dice",
                "per class",
                "s/case (median)",
                "speed vs sliding 0.5",
            ),
            rows,
        )
    )


if __name__ == "__main__":
    main()
