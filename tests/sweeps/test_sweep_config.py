"""Sweep presets, launchers and the pre-flight table: composed, never trained or submitted."""

from __future__ import annotations

import pytest

from segkit.cli import main as cli
from segkit.config import compose, expand_sweep
from segkit.errors import ConfigError
from segkit.sweeps import preview_sbatch, sweep_overrides
from segkit.sweeps.slurm import check_submitit_internals

SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def test_depth_kernel_preset_sets_sweeper_params():
    cfg = compose(["+sweep=depth_kernel"], hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {"model.depth": "3,4,5", "model.kernel_size": "3,5"}
    assert cfg.hydra.sweeper._target_.endswith("BasicSweeper")
    sweep = sweep_overrides(["+sweep=depth_kernel"])
    combos = expand_sweep(sweep.overrides)
    assert len(combos) == 6
    assert ["model.depth=5", "model.kernel_size=3", "+sweep=depth_kernel"] in combos


def test_command_line_sweep_replaces_the_preset_entry():
    sweep = sweep_overrides(["+sweep=depth_kernel", "model.depth=2,9"])
    assert sweep.overrides == ("model.kernel_size=3,5", "+sweep=depth_kernel", "model.depth=2,9")
    assert sweep.fixed == ("+sweep=depth_kernel",)
    assert sweep.launcher == "basic"


def test_optuna_search_space():
    cfg = compose(["hparams_search=optuna"], hydra_config=True)
    # hydra-optuna-sweeper (optuna<3) is gone: the preset holds segkit search's settings
    assert cfg.hydra.sweeper._target_.endswith("BasicSweeper")
    assert cfg.hydra.callbacks.segkit_search._target_ == (
        "segkit.sweeps.hydra_callback.UseSegkitSearch"
    )
    s = cfg.search
    assert (s.trials, s.sampler, s.pruner, s.sampler_seed, s.direction) == (
        20, "tpe", "asha", 1234, "maximize",
    )  # fmt: skip
    assert s.study == "segkit_demo"
    assert set(cfg.hydra.sweeper.params) == {"model.depth", "model.kernel_size", "model.channels",
                                             "optim.optimizer.lr"}  # fmt: skip
    assert cfg.optimized_metric == "val/dice_mean"
    sweep = sweep_overrides(["hparams_search=optuna"])
    # the learning rate is drawn from an interval: planned combinations cover the rest
    assert sweep.sampled == ("optim.optimizer.lr=tag(log, interval(0.001, 0.1))",)
    assert len(expand_sweep(sweep.overrides)) == 3 * 2 * 3
    assert sweep.batch_size is None  # search.workers unset: one trial at a time


def test_train_multirun_with_search_preset_names_segkit_search(tmp_path):
    import subprocess
    import sys

    from tests.utils import REPO

    cmd = [sys.executable, str(REPO / "train.py"), "-m", "hparams_search=optuna",
           "model.kernel_size=3", f"hydra.sweep.dir={tmp_path}/sw"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "train.py: error: an Optuna search runs through segkit search (Optuna >= 4, pruning, a "
        "shared study). Fix: segkit search hparams_search=optuna model.kernel_size=3 "
        f"out={tmp_path}/sw"
    ]
    assert not (tmp_path / "sw").exists()  # stopped before any job


def test_plan_preflight_of_search_preset(capsys):
    assert cli(["plan", "-m", "hparams_search=optuna", "model.depth=3", "model.channels=8"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if "feasible" in ln]
    assert len(rows) == 2 and all("model.kernel_size=" in r for r in rows)
    assert "sampled by the sweeper, not enumerated: optim.optimizer.lr=tag(log" in out


def test_joblib_launcher():
    cfg = compose(["launcher=joblib", "hydra.launcher.n_jobs=4"], hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 4
    assert compose(["launcher=local"], hydra_config=True).hydra.launcher._target_.endswith(
        "BasicLauncher"
    )


def test_slurm_launcher_config_and_submission(tmp_path):
    overrides = [
        "launcher=slurm", "+sweep=depth_kernel", "trainer=ddp", "trainer.devices=4",
        "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.tasks_per_node=4", "hydra.launcher.timeout_min=90",
        "hydra.launcher.array_parallelism=2", f"hydra.sweep.dir={tmp_path}/sw",
    ]  # fmt: skip
    launcher = compose(overrides, hydra_config=True).hydra.launcher
    assert launcher._target_ == SLURM
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 4, 4)
    assert (launcher.cpus_per_task, launcher.mem_gb, launcher.timeout_min) == (8, 64, 90)
    assert launcher.submitit_folder == f"{tmp_path}/sw/.submitit/%j"

    preview = preview_sbatch(overrides, num_jobs=6)
    p = preview.parameters
    assert (p["partition"], p["gpus_per_node"], p["ntasks_per_node"]) == ("gpu", 4, 4)
    assert (p["time"], p["mem"], p["cpus_per_task"], p["nodes"]) == (90, "64GB", 8, 1)
    assert p["setup"] == ["export OMP_NUM_THREADS=8"]
    script = preview.script
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --time=90",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --array=0-5%2", "#SBATCH --mem=64GB",
                 "#SBATCH --job-name=demo", "export OMP_NUM_THREADS=8"):  # fmt: skip
        assert line in script
    assert f"{tmp_path}/sw/.submitit/" in script
    assert not (tmp_path / "sw").exists()  # nothing was created, nothing submitted


def test_slurm_rejects_unknown_launcher_keys():
    with pytest.raises(ConfigError, match="gpus"):
        compose(["launcher=slurm", "hydra.launcher.gpus=2"], hydra_config=True)
    with pytest.raises(ConfigError, match="launcher=slurm"):
        preview_sbatch(["launcher=joblib"])


def test_plan_preflight_of_preset_with_infeasible_rows(capsys):
    rc = cli(["plan", "-m", "+sweep=depth_kernel", "model.depth=2,9", "data.patch_size=[24,24,16]",
              "model.channels=16", "model.in_channels=1", "model.out_channels=4"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["#", "overrides", "status"]
    rows = lines[2:6]
    assert [r.split()[:3] for r in rows] == [
        ["0", "model.kernel_size=3", "model.depth=2"],
        ["1", "model.kernel_size=3", "model.depth=9"],
        ["2", "model.kernel_size=5", "model.depth=2"],
        ["3", "model.kernel_size=5", "model.depth=9"],
    ]
    ok = rows[0].split()
    assert ok[3:7] == ["feasible", "74,116", "0.62", "15×15×15"]
    assert "infeasible" in rows[1] and "stage 5, axis 2" in rows[1] and "Fix:" in rows[1]


def test_plan_preflight_prints_the_sbatch_script(capsys, tmp_path):
    args = ["plan", "-m", "+sweep=depth_kernel", "launcher=slurm",
            "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "sbatch script of a 6-job array" in out
    assert "#SBATCH --array=0-5%6" in out and "#SBATCH --partition=gpu" in out


def test_submitit_internals_used_by_the_preview_exist():
    # Fails with the message below (what changed, and that submission is unaffected)
    # when a submitit release renames or reshapes the private names the preview uses.
    check_submitit_internals()


@pytest.mark.parametrize(
    ("target", "name", "message"),
    [
        ("submitit.slurm.slurm", "_make_sbatch_string", r"_make_sbatch_string no longer exists"),
        ("submitit.slurm.slurm.SlurmExecutor", "_internal_process_submissions",
         r"_internal_process_submissions no longer exists"),
    ],
    ids=["render", "intercept"],
)  # fmt: skip
def test_preview_fails_clearly_when_submitit_internals_change(monkeypatch, target, name, message):
    monkeypatch.delattr(f"{target}.{name}")
    with pytest.raises(ConfigError, match=rf"private submitit internals .*{message}.*not affected"):
        preview_sbatch(["launcher=slurm"])
