"""GPU checks (``pytest -m gpu`` on a machine with CUDA; skipped elsewhere)."""

from __future__ import annotations

import json

import pytest
import torch

from segkit.config import compose
from segkit.training.run import train
from tests.utils import TINY, preset_memory_estimate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_trainer_gpu_preset_trains_in_bf16(tmp_path, demo_data_dir):
    cfg = compose(
        [
            *TINY,
            "trainer=gpu",
            f"paths.data_dir={demo_data_dir}",
            f"paths.output_dir={tmp_path}",
        ]
    )
    assert cfg.trainer.precision == "bf16-mixed"
    value, metrics = train(cfg)
    assert 0.0 <= value <= 1.0
    assert "cpu" not in metrics["device"]
    assert metrics["peak_memory_mib"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == 4


def test_odd_sizes_on_gpu_under_bf16_autocast():
    from segkit.nn import UNet

    net = UNet(depth=5, channels=8, in_channels=1, out_channels=3).cuda()
    x = torch.randn(2, 1, 65, 67, 63, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x)
    assert out.shape == (2, 3, 65, 67, 63)


@pytest.mark.parametrize(
    ("preset", "patch", "precision"),
    [
        ("nnunet_default", (128, 128, 128), "bf16"),
        ("unet", (96, 112, 80), "fp32"),
        ("resenc", (128, 128, 128), "bf16"),
        ("mednext_s", (112, 112, 96), "bf16"),
    ],
)
def test_memory_estimate_bounds_cuda_max_memory_allocated(preset, patch, precision):
    """One-sided, as on the CPU (tests/planner/test_memory_peak.py): the estimate is never
    below the allocator's peak of a training step and at most 25 % above it."""

    from segkit.nn import UNet
    from segkit.training.losses import build_loss
    from segkit.training.module import build_optimizer

    batch = 2
    _, spec, optim, estimate = preset_memory_estimate(
        [f"model={preset}"], patch, batch, precision, "cuda"
    )
    torch.backends.cudnn.benchmark = False  # benchmarking tries workspaces of any size
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()  # before the network: the estimate includes it
    torch.manual_seed(0)
    net = UNet(spec).cuda()
    opt = build_optimizer(optim, net.parameters())
    loss_fn = build_loss({})
    x = torch.randn(batch, 1, *patch, device="cuda")
    y = torch.randint(0, 3, (batch, 1, *patch), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(net(x), y)
        loss.backward()
        del loss
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # creates the momentum buffers: steady state from here on
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - base
    ratio = estimate.total / measured
    assert 1.0 <= ratio <= 1.25, (
        f"{preset} {precision} {patch}: estimate {estimate.total / 2**30:.2f} GiB, measured "
        f"{measured / 2**30:.2f} GiB, ratio {ratio:.3f}; {estimate.breakdown()}"
    )
