"""The streamed path's memory does not grow with the volume's length (the kernel's
resident-set peak in a fresh process, not the stream's own allocation sizes), and
``max_memory_gb`` picks settings that fit or names the smallest budget that works."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segkit.errors import ConfigError
from segkit.inference.engine import InferenceSettings
from segkit.inference.outputs import SOFTMAX
from segkit.inference.stream import ModelRun, stream_predict
from segkit.nn import UNet
from segkit.spec import UNetSpec
from tests.rss import run_child

MiB = 2**20


def _child(case: dict) -> list[dict]:
    return run_child(Path(__file__).with_name("stream_memory_child.py"), case)["runs"]


def test_streamed_peak_does_not_grow_with_the_volume_length():
    short, long = 64, 256
    runs = _child(
        {
            "classes": 32,
            "patch": [32, 32, 32],
            "plane": [48, 48],
            "runs": [[True, short], [True, long], [False, short], [False, long]],
        }
    )
    peak = {(r["stream"], r["length"]): r["peak"] for r in runs}
    dense = 32 * (long - short) * 48 * 48 * 4  # float32 logits the longer volume adds
    grown_streamed = peak[True, long] - peak[True, short]
    grown_dense = peak[False, long] - peak[False, short]
    # the instrument sees the non-streamed path's logits (and its probabilities) grow ...
    assert grown_dense > 1.5 * dense, runs
    # ... and the stream only its input volume and labels (5 bytes a voxel: 2 MiB here)
    assert grown_streamed < 0.1 * dense, runs
    assert peak[True, long] < 0.5 * peak[False, long]


def _runs(classes=8, batch=4):
    torch.manual_seed(0)
    spec = UNetSpec.from_config(
        {"spatial_dims": 3, "in_channels": 1, "out_channels": classes, "depth": 3, "channels": 4}
    )
    settings = InferenceSettings(mode="sliding", sw_batch_size=batch)
    return [ModelRun(UNet(spec).eval(), (16, 16, 16), settings)]


def test_a_budget_too_small_names_the_smallest_that_works():
    x = torch.randn(1, 1, 40, 24, 24)
    with pytest.raises(ConfigError, match=r"max_memory_gb=0.01: too small") as err:
        stream_predict(_runs(), x, SOFTMAX, classes=8, max_memory_gb=0.01)
    need = float(
        str(err.value).split("the smallest budget that works is max_memory_gb=")[1].split()[0]
    )
    res = stream_predict(_runs(), x, SOFTMAX, classes=8, max_memory_gb=need)
    assert res.plan.estimate <= need * 2**30
    with pytest.raises(ConfigError, match="too small"):  # named to 0.1 GB: just below fails
        stream_predict(_runs(), x, SOFTMAX, classes=8, max_memory_gb=need - 0.1)


def test_a_budget_picks_the_largest_batch_and_most_precise_dtype_that_fit():
    x = torch.randn(1, 1, 40, 24, 24)
    free = stream_predict(_runs(), x, SOFTMAX, classes=8).plan
    assert free.sw_batch_size == 4 and free.accumulate == "float32" and free.budget is None
    roomy = stream_predict(_runs(), x, SOFTMAX, classes=8, max_memory_gb=64).plan
    assert (roomy.sw_batch_size, roomy.accumulate) == (4, "float32")
    tight = (free.estimate - 1) / 2**30  # a byte short of batch 4 in float32
    plan = stream_predict(_runs(), x, SOFTMAX, classes=8, max_memory_gb=tight).plan
    assert plan.estimate <= tight * 2**30
    assert (plan.sw_batch_size, plan.accumulate) == (3, "float32")
    assert "max_memory_gb=" in plan.describe() and "sw_batch_size=3" in plan.describe()


def test_predict_says_what_the_budget_chose(ckpt, tmp_path, capsys):
    from segkit.cli import main
    from segkit.inference.predict.run import PredictOptions
    from tests.inference.conftest import write_image

    src = write_image(tmp_path / "in" / "a.nii.gz", shape=(37, 29, 15))
    args = ["predict", f"ckpt={ckpt}", f"input={src}", "mode=sliding", "progress=false"]
    assert main([*args, f"output={tmp_path / 'o'}", "max_memory_gb=16"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "streamed along axis 0" in line and "(max_memory_gb=16)" in line
    assert "float32 accumulation" in line
    assert main([*args, f"output={tmp_path / 'o2'}", "accumulate=float16"]) == 0
    assert "float16 accumulation" in capsys.readouterr().out
    assert main([*args, f"output={tmp_path / 'o3'}", "max_memory_gb=0.01"]) == 2
    assert "the smallest budget that works is max_memory_gb=" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="max_memory_gb needs the streamed path"):
        PredictOptions(stream=False, max_memory_gb=4)
