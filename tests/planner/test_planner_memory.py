"""The planner's memory model, part by part and against the CPU allocator's peak.

Autograd's saved tensors under bf16 autocast (the activation term alone; the same instrument
the plan is traced with, so this checks bytes per dtype, not the model's completeness), and
the peak of the CPU allocator over a whole fp32 training step (forward, Dice+CE with deep
supervision, backward, SGD step) from the profiler's allocation events, one-sided like the
resident-set check of a fresh process (test_memory_peak.py) and the CUDA check
(tests/training/test_gpu.py).
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from segkit.nn import UNet, plan_unet
from segkit.planner import training_memory
from segkit.spec import UNetSpec
from segkit.training.losses import build_loss

CASES = [
    (dict(depth=4, channels=8, out_channels=3), (28, 32, 24), 2),
    (
        dict(
            depth=4,
            channels=8,
            out_channels=3,
            kernel_size=[[3, 3, 1], [3, 3, 1], 3, 3],
            strides=[1, [2, 2, 1], 2, 2],
        ),
        (40, 44, 10),
        3,
    ),
]


def _setup(cfg, size, batch, device="cpu"):
    torch.manual_seed(0)
    spec = UNetSpec.from_config(dict(dict(deep_supervision=True), **cfg, in_channels=1))
    net = UNet(spec).to(device)
    x = torch.randn(batch, 1, *size, device=device)
    y = torch.randint(0, spec.out_channels, (batch, 1, *size), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    return spec, net, x, y, opt, build_loss({})


def _step(net, x, y, loss_fn, opt, device_type="cpu", *, bf16=True):
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize(("cfg", "size", "batch"), CASES)
def test_bf16_saved_tensors_match_autograd_on_cpu(cfg, size, batch):
    spec, net, x, y, _, loss_fn = _setup(cfg, size, batch)
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16):
        loss_fn(net(x), y)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    measured = sum(v for k, v in seen.items() if k not in params)
    est = training_memory(spec, plan_unet(spec, size), batch)
    # activations (bf16) + the loss' float32 tensors + autocast's bf16 weight copies
    modelled = est.activations + est.loss + est.weight_copies
    assert abs(modelled - measured) / measured < 0.15, (modelled, measured)


@pytest.mark.parametrize(
    ("cfg", "size", "batch"),
    [CASES[0], pytest.param(*CASES[1], marks=pytest.mark.slow)],
)
def test_estimate_bounds_the_cpu_allocators_peak_of_a_training_step(cfg, size, batch):
    # fp32: bf16 convolutions on CPU are slow reference kernels; the bf16 bytes are checked
    # above, the GPU test checks the bf16 total.
    spec, net, x, y, opt, loss_fn = _setup(cfg, size, batch)
    _step(net, x, y, loss_fn, opt, bf16=False)  # momentum buffers exist from here on
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(net, x, y, loss_fn, opt, bf16=False)
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    n = sum(p.numel() for p in net.parameters())
    resident = 4 * n + 4 * n + x.numel() * 4 + y.numel() * 8  # weights, momentum, batch
    measured = resident + peak
    est = training_memory(spec, plan_unet(spec, size), batch, precision="fp32").total
    assert measured <= est <= 1.25 * measured, (est, measured, est / measured)
