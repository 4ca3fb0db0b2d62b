"""benchmarks/gpu_check.sh --dry-run: every step of the prepared GPU check, within its budget,
with scripts and flags that exist, and nothing run."""

from __future__ import annotations

import os
import re
import subprocess

from segkit.config import compose
from tests.utils import REPO


def _dry_run(tmp_path) -> tuple[str, dict[str, tuple[int, str]]]:
    env = dict(os.environ, GPU_CHECK_DIR=str(tmp_path / "work"), OUT=str(tmp_path / "out"))
    r = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    steps = {
        name: (int(limit), cmd)
        for name, limit, cmd in re.findall(r"^\[(\w+), timeout (\d+) s\] (.*)$", r.stdout, re.M)
    }
    return r.stdout, steps


def test_dry_run_lists_the_steps_and_runs_nothing(tmp_path):
    text, steps = _dry_run(tmp_path)
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()
    assert re.search(r"-m pytest -m gpu ", steps["pytest_gpu"][1])
    train = steps["train_bf16"][1].replace("\\", "")  # the shell quoting of [128,...]
    assert "trainer=gpu" in train and "model=nnunet_default" in train
    assert "data.patch_size=[128,128,128]" in train
    # trainer=gpu is what makes the run bf16: read from the real config, not from the script
    assert compose(["trainer=gpu"]).trainer.precision == "bf16-mixed"
    assert "benchmarks/gpu_memory.py" in steps["memory_model"][1]
    assert "bench_unet.py --device cuda" in steps["fwdbwd_plainconvunet"][1]
    assert "--archs resenc" in steps["fwdbwd_resenc"][1]
    for name in ("augment_cuda", "sliding_window_cuda"):
        assert "--device cuda" in steps[name][1]
    # the steps stop within the budget, and the budget leaves the whole run under 8 minutes
    budget = int(re.search(r"budget (\d+) s", text).group(1))
    assert budget <= 460


def test_dry_run_names_scripts_and_flags_that_exist(tmp_path):
    _, steps = _dry_run(tmp_path)
    for _, cmd in steps.values():
        script = re.search(r"(benchmarks/\w+\.py)", cmd)
        if script is None:
            continue
        source = (REPO / script.group(1)).read_text()
        for flag in re.findall(r"(?<= )--[a-z][\w-]*", cmd.split(script.group(1), 1)[1]):
            assert f'"{flag}"' in source, (script.group(1), flag)
