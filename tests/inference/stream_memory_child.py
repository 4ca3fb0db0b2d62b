"""Resident-set peaks of streamed and non-streamed prediction in this (fresh) process.

Run by ``tests/inference/test_stream_memory.py`` as ``python stream_memory_child.py JSON``
with glibc told to ``mmap`` large allocations and return freed memory at once (see
``tests/planner/memory_child.py``), so the kernel's high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` before each run) follows the tensors alive. The instrument is the
kernel's, not the stream's own bookkeeping. Prints one JSON line: per run, the peak above the
baseline taken just before it, and the stream's own estimate.
"""

from __future__ import annotations

import json
import sys

import torch

from segkit.inference.engine import InferenceSettings, infer
from segkit.inference.outputs import SOFTMAX
from segkit.inference.stream import ModelRun, probabilities_in_blocks, stream_predict
from segkit.nn import UNet
from segkit.spec import UNetSpec
from tests.rss import settle, status


def _run(net, run: ModelRun, x: torch.Tensor, stream: bool, classes: int, budget):
    if stream:
        res = stream_predict([run], x, SOFTMAX, classes=classes, max_memory_gb=budget)
        return res.labels, res.plan.estimate
    logits, _ = infer(net, x, patch_size=run.patch_size, settings=run.settings)
    probs = probabilities_in_blocks(logits[0], SOFTMAX)
    del logits
    return SOFTMAX.labels(probs, dim=0).to(torch.uint8), 0


def main(case: dict) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    classes = case["classes"]
    spec = UNetSpec.from_config(
        {"spatial_dims": 3, "in_channels": 1, "out_channels": classes, "depth": 3, "channels": 4}
    )
    net = UNet(spec).eval()
    patch = tuple(case["patch"])
    run = ModelRun(net, patch, InferenceSettings(mode="sliding", overlap=0.5, sw_batch_size=2))
    plane = tuple(case["plane"])
    _run(net, run, torch.randn(1, 1, patch[0] * 2, *plane), True, classes, None)  # warm-up
    _run(net, run, torch.randn(1, 1, patch[0] * 2, *plane), False, classes, None)
    out = []
    for stream, length in case["runs"]:
        x = torch.randn(1, 1, length, *plane)
        base = settle()
        labels, estimate = _run(net, run, x, stream, classes, case.get("budget"))
        peak = status("VmHWM") - base
        out.append({"stream": stream, "length": length, "peak": peak, "estimate": estimate})
        del x, labels
    return {"runs": out}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
