"""GPU checks (``pytest -m gpu`` on a machine with CUDA; skipped elsewhere)."""

from __future__ import annotations

import json

import pytest
import torch

from segkit.config import compose
from segkit.training.run import train
from tests.utils import TINY

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
