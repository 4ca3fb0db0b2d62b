"""Resident-set peaks of the engine's prediction of volumes in this (fresh) process.

Run by ``tests/inference/test_engine_memory.py`` as ``python engine_memory_child.py JSON``
under :data:`tests.rss.CHILD_ENV` (glibc mmaps large blocks and returns freed memory at once),
so the kernel's high-water mark (``VmHWM``, reset before each run) follows the live tensors:
the instrument is the kernel's, not the engine's own estimate. Prints one JSON line: per run,
the absolute peak, the peak above the resident set just before it (the input volume already
allocated), and the engine's estimate.
"""

from __future__ import annotations

import json
import sys

import torch

import segkit.inference.engine.memory as memory
from segkit.inference.engine.outputs import SOFTMAX
from segkit.inference.engine.segment import segment
from segkit.inference.engine.settings import InferenceSettings
from segkit.inference.engine.sliding import ModelRun
from segkit.nn import UNet
from tests.rss import settle, status


def main(case: dict) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    classes = case["classes"]
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=classes, depth=3, channels=4, norm="instance"
    ).eval()

    def model(overlap: float) -> ModelRun:
        return ModelRun(
            net, tuple(case["patch"]), InferenceSettings(mode="sliding", overlap=overlap)
        )

    run = model(0.0)
    segment([run], torch.randn(1, 1, *case["patch"]), SOFTMAX, classes=classes)  # warm-up
    default_accumulator = memory.ACCUMULATOR_BYTES
    out = []
    for item in case["runs"]:
        memory.ACCUMULATOR_BYTES = item.get("accumulator_bytes") or default_accumulator
        x = torch.randn(1, 1, *item["size"])
        base = settle()
        result = segment(
            [model(item.get("overlap", 0.0))],
            x,
            SOFTMAX,
            classes=classes,
            max_memory_gb=item.get("budget"),
        )
        peak = status("VmHWM")
        out.append(
            {
                "size": item["size"],
                "peak": peak,
                "above": peak - base,
                "estimate": result.plan.estimate,
                "plan": result.plan.describe(),
            }
        )
        del x, result
    return {"runs": out}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
