"""logger=wandb: a tiny train.py run in W&B's offline mode, read back with W&B's own reader of
the run's transaction log (``wandb leet inspect``, wandb-core), and compared with what Hydra
and the run wrote themselves (.hydra/config.yaml, metrics.json, plan.txt)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segkit.sweeps.tracking import trial_overrides
from tests.sweeps.conftest import REPO, TINY

wandb = pytest.importorskip("wandb")


def _inspect(run_dir: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *args, str(run_dir)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "WANDB_SILENT": "true"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow  # ~11 s: a training run; MLflow's server test stays in the default suite
def test_wandb_offline_run_records_config_plan_epochs_and_final_dice(tmp_path, demo_data_dir):
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    # a search trial's run: what `segkit search` adds for a study "study-x", trial 3
    named = trial_overrides(["csv", "wandb"], "study-x", 3)
    cmd = [sys.executable, str(REPO / "train.py"), *TINY, "trainer.max_epochs=2", "logger=wandb",
           f"paths.data_dir={demo_data_dir}", f"paths.log_dir={logs}", f"hydra.run.dir={run_dir}",
           *named]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    (offline,) = (logs / "wandb").glob("offline-run-*")
    records = [json.loads(line) for line in _inspect(offline).splitlines()]
    state = json.loads(_inspect(offline, "--summary"))
    composed = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())

    # the run, filed under the study
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert (run["run_group"], run["display_name"], run["tags"]) == ("study-x", "trial-3",
                                                                    ["study-x"])  # fmt: skip
    assert run["project"] == composed["task_name"] == "demo"
    assert (state["state"], state["exit_code"]) == ("finished", 0)

    # the composed config is the run's config, key for key (the module's own hparams apart)
    config = state["config"]
    assert {k: v for k, v in config.items() if k != "module"} == composed
    assert config["model"]["channels"] == 4 and config["data"]["patch_size"] == [24, 24, 16]
    assert isinstance(config["module"]["model"]["channels"], list)  # the spec, kept apart

    # per-epoch metrics: one row per validation, the run's own history
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    val = [row for row in rows if "val/dice_mean" in row]
    assert [row["epoch"] for row in val] == [h["epoch"] for h in metrics["val_history"]] == [0, 1]
    assert [row["val/dice_mean"] for row in val] == pytest.approx(
        [h["dice_mean"] for h in metrics["val_history"]], abs=1e-6
    )  # float32 in the history, float64 in metrics.json

    # the final Dice in the run's summary
    summary = state["summary"]
    assert summary["dice_mean_best"] == pytest.approx(metrics["dice_mean_best"], abs=1e-12)
    assert summary["dice_mean_final"] == pytest.approx(metrics["dice_mean_final"], abs=1e-12)

    # the plan summary and the config files kept as run files
    saved = {f["path"] for r in records if r["type"] == "files" for f in r["files"]["files"]}
    assert {"plan.txt", ".hydra/config.yaml", ".hydra/overrides.yaml"} <= saved
    plan = (run_dir / "plan.txt").read_text()
    assert f"depth {composed['model']['depth']}" in plan
    assert (offline / "files" / "plan.txt").read_text() == plan


def test_each_fit_ends_its_own_wandb_run(tmp_path, monkeypatch):
    # Lightning leaves a W&B run open for the process, and a second WandbLogger in it would
    # join that run: a multirun's basic launcher trains job after job in one process
    from types import SimpleNamespace

    from segkit.sweeps.tracking import TrackingRecord, WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")  # Lightning sets it: restored after the test
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = []
    for end in ("teardown", "on_exception"):
        logger = WandbLogger(project="p", save_dir=str(tmp_path), offline=True)
        trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path),
                                  loggers=[logger])  # fmt: skip
        record = TrackingRecord()
        record.on_fit_start(trainer, None)
        ids.append(logger.experiment.id)
        if end == "teardown":
            record.teardown(trainer, None, "fit")
        else:
            record.on_exception(trainer, None, RuntimeError("out of memory"))
        assert wandb.run is None
    assert ids[0] != ids[1]
    exits = [json.loads(_inspect(next((tmp_path / "wandb").glob(f"offline-run-*-{i}")),
                                 "--summary"))["exit_code"] for i in ids]  # fmt: skip
    assert exits == [0, 1]
