"""segkit search: the space, the pruning callback, and real (tiny) studies read back through
Optuna's own API and the run directories on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from segkit.cli import main as cli
from segkit.errors import ConfigError
from segkit.sweeps.space import parse_space
from tests.sweeps.conftest import REPO, TINY

optuna = pytest.importorskip("optuna")


def test_pareto_front():
    from segkit.sweeps.search_report import pareto

    # (value, cost): 1 is beaten by 0 (same value, cheaper); 3 ties 2 exactly: both stay
    points = [(0.8, 10), (0.8, 20), (0.9, 30), (0.9, 30), (0.5, 5), (0.4, 50)]
    assert pareto(points) == [0, 2, 3, 4]


def test_space_grammar():
    space = parse_space(
        ["debug=tiny", "model.depth=3,4", "model.kernel_size=range(3,7,2)"],
        {"model.depth": "choice(5)", "optim.optimizer.lr": "tag(log, interval(0.001, 0.1))",
         "model.channels": "int(interval(4, 12))"},
    )  # fmt: skip
    dims = {d.key: d for d in space.dimensions}
    assert space.fixed == ("debug=tiny",)
    assert dims["model.depth"].choices == (3, 4)  # the command line replaces the preset
    assert dims["model.kernel_size"].choices == (3, 5)
    lr = dims["optim.optimizer.lr"].distribution()
    assert (lr.low, lr.high, lr.log) == (0.001, 0.1, True)
    ch = dims["model.channels"].distribution()
    assert isinstance(ch, optuna.distributions.IntDistribution) and (ch.low, ch.high) == (4, 12)
    assert not space.enumerable and space.size == float("inf")
    with pytest.raises(ConfigError, match=r"sampler=grid needs listed values.*interval"):
        space.grid()
    fixed = parse_space(["model.depth=3", "model.kernel_size=3,5"], {"model.depth": "3,4"})
    assert fixed.keys == ("model.kernel_size",) and fixed.fixed == ("model.depth=3",)
    lists = parse_space(["model.kernel_size=choice([3,3,1],[5,5,1])"])
    (dim,) = lists.dimensions
    assert dim.choices == ("[3,3,1]", "[5,5,1]")
    assert lists.overrides({"model.kernel_size": "[5,5,1]"}) == ["model.kernel_size=[5,5,1]"]
    with pytest.raises(ConfigError, match="nothing to search"):
        parse_space(["model.depth=3"])


def _study_with_leader(tmp_path: Path, leader: float):
    """A study (pruner asha) holding one finished trial that passed rung 0 at ``leader``."""
    from segkit.sweeps.study import open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    study.set_user_attr("pruner", "asha")
    dist = {"x": optuna.distributions.CategoricalDistribution([1, 2])}
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 1}, distributions=dist, value=leader,
            intermediate_values={1: leader, 2: leader},
            system_attrs={"completed_rung_0": leader},
        )
    )  # fmt: skip
    return url, study, study.ask(dist)


@pytest.mark.parametrize(("dice", "pruned"), [(0.1, True), (0.95, False)])
def test_report_callback_prunes_a_trial_behind(tmp_path, monkeypatch, dice, pruned):
    from segkit.sweeps.pruning import PRUNED_AT, STEPS, OptunaReport
    from segkit.sweeps.study import STORAGE_ENV

    url, study, trial = _study_with_leader(tmp_path, leader=0.9)
    monkeypatch.setenv(STORAGE_ENV, url)
    callback = OptunaReport(study="s", trial=trial.number)
    trainer = SimpleNamespace(
        is_global_zero=True, sanity_checking=False, current_epoch=0, should_stop=False,
        global_step=7, callback_metrics={"val/dice_mean": torch.tensor(dice)},
    )  # fmt: skip
    callback.setup(trainer, None, "fit")
    callback.on_validation_end(trainer, None)
    callback.on_fit_end(trainer, None)
    # read back through a fresh storage: what the search process will see
    stored = optuna.load_study(study_name="s", storage=url).trials[trial.number]
    assert stored.intermediate_values == {1: pytest.approx(dice)}
    assert trainer.should_stop is pruned
    assert stored.user_attrs.get(PRUNED_AT) == (1 if pruned else None)
    assert stored.user_attrs[STEPS] == 7


def _search_cmd(data_dir: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "segkit.cli", "search", *TINY, "trainer.max_epochs=2",
            f"paths.data_dir={data_dir}", f"out={out}", *args]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = ENV
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _trials(out: Path) -> list:
    return optuna.load_study(study_name="segkit_demo", storage=f"sqlite:///{out}/study.db").trials


def _arch(t) -> tuple:
    return (t.params["model.depth"], t.params["model.kernel_size"])


def test_two_workers_one_study_preflight_report_mlflow(
    tmp_path, demo_data_dir, capsys, mlflow_server
):
    out = tmp_path / "search"
    cmd = _search_cmd(demo_data_dir, out, "model.depth=2,9", "model.kernel_size=3,5",
                      "sampler=grid", "workers=2", "heartbeat=2", "logger=mlflow",
                      f"logger.mlflow.tracking_uri={mlflow_server}")  # fmt: skip
    first = _run(cmd)  # (joining a study: the killed-worker test below)
    trials = _trials(out)
    ran = [t for t in trials if t.user_attrs.get("run_dir")]
    finished = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(t.state in finished for t in ran)
    # every feasible combination ran exactly once; depth 9 (cannot hold 24×24×16) never did
    assert sorted(_arch(t) for t in ran) == [(2, 3), (2, 5)]
    refused = [t for t in trials if t.user_attrs.get("not_run")]
    assert {_arch(t) for t in refused if t.params["model.depth"] == 9} <= {(9, 3), (9, 5)}
    assert all("stage 5, axis 2" in t.user_attrs["not_run"] for t in refused
               if t.params["model.depth"] == 9)  # fmt: skip
    # on disk: one train.py run directory per launched trial, none for the others
    dirs = sorted(int(p.name) for p in (out / "trials").iterdir())
    assert dirs == sorted(t.number for t in ran)
    for t in ran:
        run_dir = out / "trials" / str(t.number)
        cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        assert (cfg["model"]["depth"], cfg["model"]["kernel_size"]) == _arch(t)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        # the reported values are the run's own per-epoch validation Dice
        history = {h["epoch"] + 1: h["dice_mean"] for h in metrics["val_history"]}
        assert t.intermediate_values == pytest.approx(history)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(metrics["dice_mean_best"])
    # two trials ran at the same time (the storage's own start/end times)
    spans = [(t.datetime_start, t.datetime_complete) for t in ran]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])
    assert "never launched" in first.stdout and "stage 5, axis 2" in first.stdout

    _check_report(out, ran, capsys)
    _check_mlflow(mlflow_server, out, ran)


def _check_mlflow(uri: str, out: Path, ran: list) -> None:
    """Each trial is an MLflow run on the server, read back with MLflow's own client."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("segkit_demo")  # the study's name
    runs = client.search_runs([experiment.experiment_id])
    by_trial = {int(r.data.tags["optuna_trial"]): r for r in runs}
    assert set(by_trial) == {t.number for t in ran}
    for t in ran:
        run = by_trial[t.number]
        metrics = json.loads((out / "trials" / str(t.number) / "metrics.json").read_text())
        assert run.data.tags["optuna_study"] == "segkit_demo"
        assert run.info.run_name == f"trial-{t.number}"
        history = client.get_metric_history(run.info.run_id, "val/dice_mean")
        assert [m.value for m in history] == pytest.approx(
            [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        )
        assert run.data.metrics["dice_mean_best"] == pytest.approx(metrics["dice_mean_best"])
        assert run.data.params["model.depth"] == str(t.params["model.depth"])
        assert run.data.params["data.patch_size"] == "[24, 24, 16]"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"plan.txt", "config.yaml", "overrides.yaml"} <= artifacts


def _check_report(out: Path, ran: list, capsys) -> None:
    """sweep-report against the study (Optuna's API) and the runs' own metrics.json."""
    import csv

    assert cli(["sweep-report", str(out)]) == 0
    rows = list(csv.DictReader((out / "search_summary.csv").open()))
    by_trial = {r["trial"]: r for r in rows if r["trial"]}
    assert set(by_trial) == {str(t.number) for t in ran}
    complete = {}
    for t in ran:
        r, run = by_trial[str(t.number)], out / "trials" / str(t.number)
        metrics = json.loads((run / "metrics.json").read_text())
        assert r["state"] == t.state.name.lower()
        assert float(r["best val/dice_mean"]) == pytest.approx(max(t.intermediate_values.values()))
        assert int(r["params"]) == metrics["params"] and int(r["steps"]) == metrics["global_step"]
        last = "" if r["state"] == "complete" else str(max(t.intermediate_values))
        assert r["pruned at epoch"] == last
        if r["state"] == "complete":
            complete[t.number] = (metrics["dice_mean_best"], metrics["params"])
    never = [r for r in rows if r["state"] == "never launched"]
    assert sorted(r["model.depth"] for r in never) == ["9", "9"]
    assert all("stage 5, axis 2" in r["reason"] for r in never)
    # the front, by brute force over the complete trials: no other is better and smaller
    front = {
        n
        for n, (d, p) in complete.items()
        if not any(e >= d and q <= p and (e, q) != (d, p) for e, q in complete.values())
    }
    assert {int(r["trial"]) for r in rows if "P" in r["Pareto"]} == front  # fmt: skip
    assert (out / "search_summary.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert cli(["sweep-report", str(out), "--best"]) == 0
    best = max(complete, key=lambda n: complete[n][0])
    words = capsys.readouterr().out.split()
    params = next(t.params for t in ran if t.number == best)
    assert words[-2:] == [f"model.depth={params['model.depth']}",
                          f"model.kernel_size={params['model.kernel_size']}"]  # fmt: skip
    assert "debug=tiny" in words and not any("callbacks.search" in w for w in words)


def _running_trial_pids(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_text():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def test_killed_worker_trial_failed_retried_and_completed(tmp_path, demo_data_dir):
    out = tmp_path / "search"
    cmd = _search_cmd(demo_data_dir, out, "model.depth=2,3", "model.kernel_size=3",
                      "sampler=grid", "heartbeat=1", "grace=3", "retry=1")  # fmt: skip
    worker = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    marker = f"hydra.run.dir={out}/trials/0"
    deadline = time.time() + 60
    while not _running_trial_pids(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert _running_trial_pids(marker), "trial 0 never started"
    time.sleep(1.0)
    worker.send_signal(signal.SIGKILL)  # mid-trial: no tell, no cleanup
    worker.wait(timeout=10)
    # a tiny trial trains for several seconds: one still running 2 s on was orphaned
    deadline = time.time() + 2
    while _running_trial_pids(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert not _running_trial_pids(marker), "the killed worker's training outlived it"
    (killed,) = _trials(out)
    assert killed.state == optuna.trial.TrialState.RUNNING  # what the kill left behind

    _run([*cmd, "workers=2"])  # the same search, joined with two workers
    trials = _trials(out)
    states = {t.number: t.state.name for t in trials}
    assert states[0] == "FAIL"  # given up by its stopped heartbeat
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == killed.params
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert sorted(t.params["model.depth"] for t in done) == [2, 3]
    assert retried[0] in done


def test_best_overrides_leave_the_search_preset_out():
    # hparams_search=optuna holds the space and turns on multirun: one train.py run drops it
    from segkit.sweeps.search import train_overrides

    fixed = ["hparams_search=optuna", "debug=tiny", "+hparams_search=x", "model.depth=3"]
    assert train_overrides(fixed) == ["debug=tiny", "model.depth=3"]
