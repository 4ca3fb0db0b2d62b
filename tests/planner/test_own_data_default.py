"""Own data is planned by default: ``python train.py data=msd data.root=PATH`` runs the planner.

The reference for what the planner decides is ``segkit configure --json`` on the same data
(it plans afresh, without the start-up hook's cached answer or its writing into the config);
what was trained is read back from the run's checkpoint weights, plan.txt and log.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from segkit.cli import main
from segkit.config import compose
from segkit.planner import explicit_keys
from segkit.planner.result import PLANNED_KEYS

REPO = Path(__file__).resolve().parents[2]

# CPU limits only: none of them is a planned key, so the planner decides everything it plans
SHRINK = [
    "data.num_folds=2",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=1",
    "++trainer.limit_val_batches=0",
    "calibrate_inference.enabled=false",
    "print_plan=false",
]


@pytest.fixture(scope="module")
def own_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 demo cases at half resolution (every 2nd voxel, twice the spacing): ~35×35×19."""
    from segkit.data.demo import make_demo

    base = tmp_path_factory.mktemp("own")
    root = base / "Task99_Own"
    shutil.copytree(make_demo(base / "demo", num_cases=4, seed=0), root)
    for f in sorted(root.glob("*Tr/*.nii.gz")):
        img = nib.load(str(f))
        affine = img.affine.copy()
        affine[:3, :3] *= 2
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::2, ::2, ::2], affine), str(f))
    return root


def _configure(capsys, root: Path, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["configure", "--json", "data=msd", f"data.root={root}", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _xs(values) -> str:
    return "×".join(str(int(v)) for v in values)


def test_shrinking_overrides_are_not_planned_keys():
    assert explicit_keys(SHRINK).isdisjoint(PLANNED_KEYS)


@pytest.mark.filterwarnings("ignore")
def test_train_py_on_own_data_trains_the_planned_network(own_data, tmp_path, capsys):
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", "data=msd", f"data.root={own_data}", *SHRINK]
    proc = subprocess.run(
        [*cmd, f"hydra.run.dir={run}"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = _configure(capsys, own_data)
    assert ref["explicit_overrides"] == []

    # the run log prints every decision, one line each, as `segkit configure` does
    log = (run / "train.log").read_text()
    for line in ref["decisions"]:
        assert f"planner: {line}\n" in log
    assert (run / "planner.txt").read_text().splitlines() == ref["decisions"]

    # the plan of the trained network and the network in the checkpoint are the planned ones
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert f"3D U-Net, depth {ref['model.depth']}," in (run / "plan.txt").read_text()
    assert f"patch {_xs(ref['data.patch_size'])}\n" in (run / "plan.txt").read_text()
    assert hp["patch_size"] == ref["data.patch_size"]
    assert hp["model"]["strides"] == ref["model.strides"]
    assert hp["preprocessor"]["target_spacing"] == pytest.approx(ref["data.target_spacing"])
    assert ckpt["global_step"] == 1
    weights = ckpt["state_dict"]
    for i, (channels, kernel) in enumerate(zip(ref["model.channels"], ref["model.kernel_size"])):
        shape = weights[f"net.encoder.{i}.blocks.0.convs.0.conv.weight"].shape
        assert (shape[0], list(shape[2:])) == (channels, kernel), f"stage {i}"
    assert f"net.encoder.{ref['model.depth']}.blocks.0.convs.0.conv.weight" not in weights
    # the planned network is not the one data=msd composes before planning
    fixed = yaml.safe_load((REPO / "conf/data/msd.yaml").read_text())["patch_size"]
    assert hp["patch_size"] != fixed


def test_explicit_patch_wins_and_is_reported_as_given(own_data, tmp_path, capsys):
    from segkit.training.run import prepare

    patch = [24, 20, 12]
    given = f"data.patch_size=[{','.join(map(str, patch))}]"
    ref = _configure(capsys, own_data, given)
    free = _configure(capsys, own_data)
    assert free["data.patch_size"] != patch  # else the test could not tell who decided

    out = tmp_path / "run"
    overrides = ["data=msd", f"data.root={own_data}", given, *SHRINK, f"paths.output_dir={out}"]
    cfg = compose(overrides, hydra_config=True)  # the command line, as train.py sees it
    _, spec, plan, _ = prepare(cfg)
    assert list(plan.input_size) == patch
    # the rest is planned around the given patch, as the planner decides it
    assert (spec.depth, [list(s) for s in spec.strides]) == (
        ref["model.depth"],
        ref["model.strides"],
    )
    recorded = json.loads((out / "planner.json").read_text())
    assert recorded["explicit_overrides"] == ["data.patch_size"]
    assert f"patch {_xs(patch)}: given (data.patch_size)" in recorded["decisions"]


def test_planner_none_trains_the_configured_network(own_data, tmp_path):
    from segkit.training.run import prepare

    out = tmp_path / "run"
    overrides = ["data=msd", f"data.root={own_data}", "planner=none", *SHRINK]
    _, spec, plan, _ = prepare(compose([*overrides, f"paths.output_dir={out}"], hydra_config=True))
    unet = yaml.safe_load((REPO / "conf/model/unet.yaml").read_text())
    msd = yaml.safe_load((REPO / "conf/data/msd.yaml").read_text())
    assert list(plan.input_size) == msd["patch_size"] == [128, 128, 128]
    assert (spec.depth, spec.channels[0]) == (unet["depth"], unet["channels"])
    assert not (out / "planner.json").exists()


@pytest.mark.parametrize("model", ["model=unet2d", "model.spatial_dims=2"])
def test_2d_is_planned_through_start_up(own_data, tmp_path, capsys, model):
    from segkit.training.run import prepare

    ref = _configure(capsys, own_data, model)
    out = tmp_path / "run"
    overrides = ["data=msd", f"data.root={own_data}", model, *SHRINK, f"paths.output_dir={out}"]
    cfg = compose(overrides, hydra_config=True)
    dm, spec, plan, _ = prepare(cfg)
    assert spec.spatial_dims == 2 and list(plan.input_size) == ref["data.patch_size"]
    assert [list(k) for k in spec.kernel_size] == ref["model.kernel_size"]
    dm.prepare_data()
    assert dm.preprocessor.target_spacing == pytest.approx(ref["data.target_spacing"])
    assert dm.slice_axis == ref["slice_axis"]  # slices are cut across the axis the plan assumed


def test_segkit_plan_shows_what_train_py_trains(own_data, capsys):
    ref = _configure(capsys, own_data)
    assert main(["plan", "data=msd", f"data.root={own_data}"]) == 0
    out = capsys.readouterr().out
    assert "planner auto" in out.splitlines()[0]
    assert f"3D U-Net, depth {ref['model.depth']}," in out
    assert f"patch {_xs(ref['data.patch_size'])}\n" in out
    assert main(["plan", "data=msd", f"data.root={own_data}", "planner=none"]) == 0
    assert "patch 128×128×128" in capsys.readouterr().out


def test_demo_and_presets_keep_their_fixed_network():
    demo = compose([], hydra_config=True)
    assert not demo.planner.auto and demo.hydra.runtime.choices.model == "demo"
    for name in ("msd_prostate", "msd_hippocampus"):
        assert not compose([f"experiment={name}"]).planner.auto  # their hand-set patch wins


def test_unknown_command_line_is_said_not_silently_replanned(own_data, caplog):
    from segkit.planner import apply_planner

    given = ["data=msd", f"data.root={own_data}", "data.patch_size=[24,20,12]", *SHRINK]
    with caplog.at_level("WARNING", logger="segkit"):
        apply_planner(compose(given), record=False)  # no hydra_config: the overrides are lost
    assert "overrides of this config are unknown" in caplog.text
    assert "hydra_config=True" in caplog.text
    caplog.clear()
    cfg = apply_planner(compose(given, hydra_config=True), record=False)
    assert list(cfg.data.patch_size) == [24, 20, 12] and "unknown" not in caplog.text
