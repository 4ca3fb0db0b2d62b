"""Measure the real memory peak of one training step in this (fresh) process.

Run by ``tests/planner/test_memory_peak.py`` as ``python memory_child.py CASE_JSON`` with
glibc told to ``mmap`` every allocation above 64 KiB and to return freed memory at once
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so the resident set follows the
tensors that are alive. The instrument is the kernel's resident-set high-water mark
(``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs``), which sees every
byte the process touches — PyTorch's tensors and anything else — and nothing of autograd's
bookkeeping that the memory model reads.

Protocol: a full warm-up step at the same size with a throw-away network (pages in the kernels'
code and oneDNN's primitive caches, which are not training memory, like a CUDA context), then a
baseline; the network, optimizer and batch are built after the baseline, because the estimate
includes weights, gradients, optimizer state and the batch; one step creates the optimizer's
buffers; the peak of the next step (steady state: momentum alive during backward) above the
baseline is the measurement. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from segkit.nn import UNet
from segkit.spec import UNetSpec
from segkit.training.losses import build_loss
from tests.rss import settle, status


def _build(case: dict):
    torch.manual_seed(0)
    spec = UNetSpec.from_config(case["model"])
    net = UNet(spec)
    kwargs = {k: v for k, v in case["optimizer"].items() if not k.startswith("_")}
    opt = getattr(torch.optim, case["optimizer"]["_target_"].rsplit(".", 1)[-1])(
        net.parameters(), **kwargs
    )
    n = case["batch"]
    x = torch.randn(n, spec.in_channels, *case["patch"])
    y = torch.randint(0, spec.out_channels, (n, 1, *case["patch"]))
    return net, opt, x, y


def _step(net, opt, x, y, loss_fn, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(net(x), y)
    loss.backward()
    del loss
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(case: dict) -> dict:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        raise SystemExit("run with MALLOC_MMAP_THRESHOLD_ set (see tests/rss.py CHILD_ENV)")
    torch.set_num_threads(1)
    bf16 = case["precision"] == "bf16"
    loss_fn = build_loss({})
    warm = _build(case)
    _step(*warm, loss_fn, bf16)
    del warm
    base = settle()
    net, opt, x, y = _build(case)
    _step(net, opt, x, y, loss_fn, bf16)
    resident = settle() - base
    _step(net, opt, x, y, loss_fn, bf16)
    peak = status("VmHWM") - base
    params = sum(p.numel() for p in net.parameters())
    state = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    tensors = 4 * params + state + x.numel() * x.element_size() + y.numel() * y.element_size()
    return dict(peak=peak, resident=resident, resident_tensors=tensors, params=params)


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
