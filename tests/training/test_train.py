"""End-to-end training on the demo data with the real conf/, shrunk to seconds."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
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
        "calibrate_inference.enabled=true",
        "calibrate_inference.overlaps=[0,0.5]",
    )
    value, metrics = train(cfg)

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "ok"
    history = [h["dice_mean"] for h in saved["val_history"]]
    assert value == saved["dice_mean_best"] == max(history)
    assert saved["dice_mean_final"] == history[-1]
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

    # Validation during training and `segkit predict` + `segkit evaluate` are one inference
    # path: the same checkpoint and settings give the same mean foreground Dice.
    assert saved["validation_inference"] == "mode=auto overlap=0.5 window_scale=1"
    # (Validation and predict + evaluate agree to 1e-9 when they run the same inference; a
    # wrong overlap or window moves the Dice by about 5e-4, which 1e-6 catches.)
    images, labels = _validation_folders(tmp_path, demo_data_dir, saved["validation_cases"])
    final = _predict_and_score(
        tmp_path / "checkpoints" / "last.ckpt",
        images,
        labels,
        tmp_path / "pred_last",
        mode="auto",
        overlap=0.5,
        window_scale=1.0,
    )
    assert final == pytest.approx(saved["dice_mean_final"], abs=1e-6)
    assert _hand_dice(tmp_path / "pred_last", labels) == pytest.approx(final, abs=1e-6)
    # by default predict uses the setting measured on the validation fold after training,
    # and reproduces the Dice that measurement reported
    chosen = saved["inference"]
    assert chosen["checkpoint"] == "best.ckpt" and len(chosen["rows"]) == 4
    best = _predict_and_score(
        tmp_path / "checkpoints" / "best.ckpt", images, labels, tmp_path / "pred_best"
    )
    assert best == pytest.approx(chosen["dice_mean"], abs=1e-6)


def test_validation_dice_of_resampled_cases_is_predict_plus_evaluate(tmp_path, demo_data_dir):
    # Not the demo's median spacing (1 × 1 × 2.5 mm): every case is resampled, so validation
    # scores its prediction after inverting the resampling onto the original label's grid,
    # as `segkit predict` writes it and `segkit evaluate` scores it.
    target = [1.3, 1.1, 2.0]
    cfg = _cfg(
        tmp_path,
        demo_data_dir,
        f"data.target_spacing=[{','.join(map(str, target))}]",
        "trainer.max_epochs=1",
        "~callbacks.pictures",
    )
    train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    cases = saved["validation_cases"]
    ckpt = tmp_path / "checkpoints" / "last.ckpt"

    from segkit.inference.predict.checkpoint import load_model

    preprocessor = load_model(ckpt).preprocessor
    assert list(preprocessor.target_spacing) == target
    for case in cases:
        image = demo_data_dir / "demo" / "imagesTr" / f"{case}.nii.gz"
        _, props = preprocessor.preprocess_image([image])
        assert props["resampled_shape"] != props["shape_after_crop"], case
    images, labels = _validation_folders(tmp_path, demo_data_dir, cases)
    options = {"mode": "auto", "overlap": 0.5, "window_scale": 1.0}
    final = _predict_and_score(ckpt, images, labels, tmp_path / "pred", **options)
    assert final == pytest.approx(saved["dice_mean_final"], abs=1e-6)
    assert _hand_dice(tmp_path / "pred", labels) == pytest.approx(final, abs=1e-6)


def _validation_folders(tmp_path: Path, data_dir: Path, cases: list[str]) -> tuple[Path, Path]:
    """The validation cases' raw images and labels, linked into two folders."""
    assert len(cases) == 2
    images, labels = tmp_path / "val_images", tmp_path / "val_labels"
    for folder, sub in ((images, "imagesTr"), (labels, "labelsTr")):
        folder.mkdir()
        for case in cases:
            name = f"{case}.nii.gz"
            (folder / name).symlink_to(data_dir / "demo" / sub / name)
    return images, labels


def _predict_and_score(ckpt, images, labels, out, **options) -> float:
    from segkit.inference.metrics.dice import mean_dice
    from segkit.inference.metrics.evaluate import evaluate
    from segkit.inference.predict.run import PredictOptions, predict

    predict(ckpt=ckpt, input=images, output=out, options=PredictOptions(progress=False, **options))
    scores = evaluate(pred=out, labels=labels, num_classes=4)
    return mean_dice(torch.tensor([s.dice for s in scores]))[1]


def _hand_dice(pred_dir: Path, label_dir: Path, num_classes: int = 4) -> float:
    """Mean foreground Dice written out with numpy: per class 2|P∩R| / (|P| + |R|) over the
    cases where the class occurs in either, averaged over cases, then over classes."""
    import nibabel as nib
    import numpy as np

    per_class: dict[int, list[float]] = {k: [] for k in range(1, num_classes)}
    for label_path in sorted(label_dir.iterdir()):
        ref = np.asarray(nib.load(label_path).dataobj)
        pred = np.asarray(nib.load(pred_dir / label_path.name).dataobj)
        for k in per_class:
            p, r = pred == k, ref == k
            if p.sum() + r.sum():
                per_class[k].append(2 * (p & r).sum() / (p.sum() + r.sum()))
    means = [sum(v) / len(v) for v in per_class.values() if v]
    return sum(means) / len(means)


def _train_cmd(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        *TINY,
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def test_sigkill_then_resume_trains_only_the_remaining_steps(tmp_path, demo_data_dir):
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
    # killed by SIGKILL right after step 7: the newest checkpoint is the one of step 6
    killed = subprocess.run(
        _train_cmd(
            tmp_path,
            demo_data_dir,
            *steps,
            "+callbacks.kill._target_=tests.utils.KillAtStep",
            "+callbacks.kill.step=7",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert killed_at == 6
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
    # the resumed process's own log (CSVLogger starts a new file) has exactly steps 7..12
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    trained = sorted(
        int(r.split(",")[header.index("step")])
        for r in rows[1:]
        if r.split(",")[header.index("train/loss_step")]
    )
    assert trained == list(range(killed_at, 12)), trained


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path, demo_data_dir):
    from tests.inference.test_bad_input import _Payload

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Payload(str(marker))}, evil)
    out = subprocess.run(
        _train_cmd(tmp_path / "run", demo_data_dir, f"ckpt_path={evil}"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "refused to load" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()


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
    assert metrics["patch_size"] == [32, 32]
    assert "32×32 → 32×32" in (tmp_path / "plan.txt").read_text()
    assert (tmp_path / "pictures" / "val_epoch001.png").is_file()

    import nibabel as nib

    from segkit.inference.predict.run import PredictOptions, predict

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
    # validation of a 2D network is slice by slice too, the same path as predict
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert value == saved["dice_mean_best"]
    _assert_final_dice_is_predict_plus_hand_dice(tmp_path, demo_data_dir, saved)


def _assert_final_dice_is_predict_plus_hand_dice(tmp_path, demo_data_dir, metrics):
    """last.ckpt predicted as `segkit predict` would, scored by hand, is the final val Dice."""
    from segkit.inference.predict.run import PredictOptions, predict

    images, labels = _validation_folders(tmp_path, demo_data_dir, metrics["validation_cases"])
    predict(
        ckpt=tmp_path / "checkpoints" / "last.ckpt",
        input=images,
        output=tmp_path / "pred_val",
        options=PredictOptions(mode="auto", overlap=0.5, window_scale=1.0, progress=False),
    )
    assert _hand_dice(tmp_path / "pred_val", labels) == pytest.approx(
        metrics["dice_mean_final"], abs=1e-6
    )


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
    # the two ranks' validation Dice, gathered, is that of one process scoring all the cases

    _assert_final_dice_is_predict_plus_hand_dice(tmp_path, demo_data_dir, metrics)
