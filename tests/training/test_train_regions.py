"""Region-based training end to end on the BraTS-like demo: one sigmoid output per region,
validation scored per region, and `segkit predict` + `segkit evaluate` agreeing with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segkit.config import compose
from segkit.data.demo import make_demo
from segkit.training.run import train
from tests.utils import TINY

NAMES = ["whole_tumor", "tumor_core", "enhancing_tumor"]


@pytest.fixture(scope="module")
def region_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("regions")
    make_demo(data_dir / "demo_regions", num_cases=4, seed=0, regions=True)
    return data_dir


def _links(folder: Path, source: Path, names: list[str]) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(source / name)
    return folder


def test_region_training_validation_equals_predict_plus_evaluate(tmp_path, region_data):
    from segkit.data.layouts import read_dataset_info
    from segkit.inference.metrics.dice import mean_dice
    from segkit.inference.metrics.evaluate import evaluate
    from segkit.inference.predict.checkpoint import load_model
    from segkit.inference.predict.run import PredictOptions, predict

    cfg = compose(
        [
            *TINY,
            "data=demo_regions",
            f"paths.data_dir={region_data}",
            f"paths.output_dir={tmp_path}",
            "data.num_folds=2",
            "callbacks.last_every_n_steps.every_n_train_steps=1",
            "~callbacks.pictures",
            "calibrate_inference.enabled=true",
            "calibrate_inference.overlaps=[0,0.5]",
            "calibrate_inference.window_scales=[1.0]",
        ]
    )
    train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert list(saved["dice_final"]) == NAMES  # validation scores regions, not labels
    assert (
        "3 sigmoid regions (whole_tumor, tumor_core, enhancing_tumor)"
        in (tmp_path / "plan.txt").read_text()
    )
    last = tmp_path / "checkpoints" / "last.ckpt"
    model = load_model(last)
    assert model.spec.out_channels == 3
    assert model.head.is_regions and model.head.region_order == (1, 2, 3)

    root = region_data / "demo_regions"
    regions = read_dataset_info(root).regions
    cases = saved["validation_cases"]
    assert len(cases) == 2
    images = _links(
        tmp_path / "val_images",
        root / "imagesTr",
        [f"{c}_{k:04d}.nii.gz" for c in cases for k in range(4)],
    )
    labels = _links(tmp_path / "val_labels", root / "labelsTr", [f"{c}.nii.gz" for c in cases])

    def scored(ckpt: Path, out: Path, **options) -> tuple[list[float], float]:
        predict(
            ckpt=ckpt, input=images, output=out, options=PredictOptions(progress=False, **options)
        )
        scores = evaluate(pred=out, labels=labels, regions=regions)
        table = torch.tensor([[r[1] for r in s.regions] for s in scores], dtype=torch.float64)
        per_region, mean = mean_dice(table)
        return per_region.tolist(), mean

    per_region, mean = scored(last, tmp_path / "pred", mode="auto", overlap=0.5, window_scale=1.0)
    assert mean == pytest.approx(saved["dice_mean_final"], abs=1e-6)
    assert per_region == pytest.approx([saved["dice_final"][n] for n in NAMES], abs=1e-6)
    # best.ckpt at its calibrated setting (the default) reproduces calibration's Dice
    _, best = scored(tmp_path / "checkpoints" / "best.ckpt", tmp_path / "pred_best")
    assert best == pytest.approx(saved["inference"]["dice_mean"], abs=1e-6)

    # held-out cases: evaluate finds the regions in the dataset.json beside labelsTs
    predict(
        ckpt=last,
        input=root / "imagesTs",
        output=tmp_path / "pred_ts",
        options=PredictOptions(progress=False, save_probabilities=True),
    )
    held_out = evaluate(pred=tmp_path / "pred_ts", labels=root / "labelsTs")
    assert [[r[0] for r in s.regions] for s in held_out] == [NAMES] * 3
    # the saved probabilities are per region, named by region (not by label value)
    import numpy as np

    saved_probs = np.load(next((tmp_path / "pred_ts").glob("*.npz")))
    assert saved_probs["label_names"].tolist() == NAMES
    assert saved_probs["probabilities"].shape[0] == 3


def test_plan_and_configure_show_the_region_outputs(region_data, capsys):
    from segkit.cli import main

    outputs = (
        "outputs: 3 sigmoid regions (whole_tumor, tumor_core, enhancing_tumor); label map by "
        "regions_class_order [1, 2, 3]"
    )
    assert main(["plan", "data=demo_regions", f"paths.data_dir={region_data}"]) == 0
    shown = capsys.readouterr().out
    assert outputs in shown and "× 4 ch  →  output 40×40×32 × 3 ch" in shown
    root = region_data / "demo_regions"
    assert main(["configure", "data=msd", f"data.root={root}", "planner.memory_gb=1"]) == 0
    shown = capsys.readouterr().out
    assert outputs in shown and " × 3 ch" in shown.split("\ninput ")[-1]
