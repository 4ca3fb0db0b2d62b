"""End-to-end training on the demo data with the real conf/, shrunk to seconds."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segkit.config import compose
from segkit.training.run import train
from tests.utils import REPO, TINY, CaptureWeights


def _cfg(tmp_path: Path, data_dir: Path, *extra: str):
    return compose(
        [
            *TINY,
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={tmp_path}",
            "callbacks.last_every_n_steps.every_n_train_steps=1",
            *extra,
        ]
    )


def test_train_end_to_end_writes_real_metrics_and_reloadable_checkpoint(tmp_path, demo_data_dir):
    cfg = _cfg(
        tmp_path,
        demo_data_dir,
        "model.block=residual",
        "model.kernel_size=5",
        "+callbacks.capture._target_=tests.utils.CaptureWeights",
    )
    value, metrics = train(cfg)

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "ok"
    assert 0.0 <= saved["dice_mean_best"] <= 1.0 and value == saved["dice_mean_best"]
    assert set(saved["dice_best"]) == {"bright", "medium", "textured"}
    assert saved["global_step"] == 4 and saved["epochs"] == 2
    assert saved["params"] > 0 and saved["gflops_per_patch"] > 0 and saved["peak_memory_mib"] > 0
    assert len(saved["val_history"]) == 2
    plan = (tmp_path / "plan.txt").read_text()
    assert "5×5×5" in plan and "shortcut" in plan and "24×24×16" in plan
    for name in (
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "curves.png",
        "csv/metrics.csv",
        "pictures/val_epoch001.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    from segkit.training.module import SegModule

    # the trained network as it was in memory at the end of fit ...
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    module = SegModule(**ckpt["hyper_parameters"])
    trained = SegModule(**ckpt["hyper_parameters"]).net
    trained.load_state_dict(CaptureWeights.final)
    # ... and as the checkpoint (loaded without unpickling code) rebuilds it
    module.load_state_dict(ckpt["state_dict"])
    x = torch.randn(1, 1, 31, 27, 19)
    with torch.no_grad():
        expected = trained.eval()(x)
        reloaded = module.net.eval()(x)
    assert reloaded.shape == (1, 4, 31, 27, 19)
    assert torch.equal(reloaded, expected)


def _train_cmd(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        *TINY,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def test_sigkill_then_resume_continues_from_last_checkpoint(tmp_path, demo_data_dir):
    steps = [
        "trainer.max_epochs=3",
        "++trainer.limit_train_batches=4",
        "data.samples_per_epoch=8",
        "callbacks.last_every_n_steps.every_n_train_steps=2",
        "logger=csv",
        "~callbacks.pictures",
        "trainer.check_val_every_n_epoch=3",
    ]
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        _train_cmd(tmp_path, demo_data_dir, *steps),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
            if step >= 4:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 4 <= killed_at < 12
    assert not (tmp_path / "metrics.json").exists()

    out = subprocess.run(
        _train_cmd(tmp_path, demo_data_dir, *steps, "resume=true"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Restored all states from the checkpoint" in out.stdout + out.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_step"] == 12
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps_logged = [
        int(r.split(",")[header.index("step")])
        for r in rows[1:]
        if r.split(",")[header.index("train/loss_step")]
    ]
    # the resumed process trained only the steps after the checkpoint
    assert min(steps_logged) >= killed_at - 1 or len(set(steps_logged)) <= 12


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["model=nosuchmodel"], "nosuchmodel"),
        (["data.root=/nonexistent/Task99"], "/nonexistent/Task99"),
        (["data.patch_size=[6,6,6]", "model.depth=5"], "stage"),
        (["model.out_channels=7"], "model.out_channels=7 but the dataset has 4"),
        (["model.kernel_size=[3,3]"], "model.kernel_size"),
    ],
)
def test_bad_configuration_is_one_clear_message_before_training(
    tmp_path, demo_data_dir, override, message
):
    out = subprocess.run(
        _train_cmd(tmp_path, demo_data_dir, *override),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_compose_accepts_command_line_architecture(demo_data_dir, tmp_path):
    cfg = _cfg(
        tmp_path, demo_data_dir, "model.depth=4", "model.kernel_size=5", "model.block=residual"
    )
    assert (cfg.model.depth, cfg.model.kernel_size, cfg.model.block) == (4, 5, "residual")
    assert math.isfinite(cfg.optim.optimizer.lr)
    assert os.fspath(cfg.paths.output_dir) == os.fspath(tmp_path)


def test_2d_network_trains_on_3d_volumes_slice_by_slice(tmp_path, demo_data_dir):
    cfg = _cfg(tmp_path, demo_data_dir, "model=unet2d", "data.patch_size=[32,32]")
    value, metrics = train(cfg)
    assert 0.0 <= value <= 1.0
    assert metrics["patch_size"] == [32, 32]
    assert "32×32 → 32×32" in (tmp_path / "plan.txt").read_text()
    assert (tmp_path / "pictures" / "val_epoch001.png").is_file()

    import nibabel as nib

    from segkit.inference.predict import PredictOptions, predict

    image = sorted((demo_data_dir / "demo" / "imagesTs").glob("*.nii.gz"))[0]
    written = predict(
        ckpt=tmp_path / "checkpoints" / "last.ckpt",
        input=image,
        output=tmp_path / "pred",
        options=PredictOptions(progress=False),
    )
    source, pred = nib.load(image), nib.load(written[0])
    assert pred.shape == source.shape
    assert (pred.affine == source.affine).all()


def test_ddp_preset_runs_on_two_cpu_ranks(tmp_path, demo_data_dir):
    # trainer=ddp as on a GPU node, with gloo on CPU: 2 ranks share each epoch's patches
    ddp = [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.benchmark=false",
        "logger=csv",
        "~callbacks.pictures",
        "data.samples_per_epoch=8",
        "++trainer.limit_train_batches=null",
    ]
    out = subprocess.run(
        _train_cmd(tmp_path, demo_data_dir, *ddp),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out.stdout + out.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # 8 patches per epoch, batch 2, split over 2 ranks: 2 steps per epoch, 2 epochs
    assert metrics["global_step"] == 4
    assert 0.0 <= metrics["dice_mean_best"] <= 1.0
