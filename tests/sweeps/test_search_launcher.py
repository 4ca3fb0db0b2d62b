"""segkit search with launcher=slurm / submitit_local: its workers as submitit jobs, checked
against submitit's own objects (the submissions SlurmExecutor would send, the sbatch script it
renders, LocalJob results and logs) and conf/launcher/*.yaml, the one home of their settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segkit.cli import main as cli
from segkit.sweeps import submit
from segkit.sweeps.search import run_search
from segkit.sweeps.slurm import intercepted_sbatch
from segkit.sweeps.study import STORAGE_ENV
from tests.sweeps.conftest import REPO, TINY

optuna = pytest.importorskip("optuna")
submitit = pytest.importorskip("submitit")

SPACE = ("model.depth=2,3", "model.kernel_size=3", "sampler=grid")


def _search_args(data_dir: Path, out: Path, *args: str) -> list[str]:
    return ["search", *TINY, "trainer.max_epochs=2", f"paths.data_dir={data_dir}",
            f"out={out}", *SPACE, *args]  # fmt: skip


def test_node_local_paths():
    assert "temporary directory" in submit.node_local(Path("/tmp/x/study.db"))
    assert "temporary directory" in submit.node_local(Path("/dev/shm/x"))
    assert submit.node_local(REPO) is None or str(REPO).startswith(("/tmp", "/var/tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["launcher=joblib"],
         r"launcher=joblib: segkit search cannot run its workers through joblib\. Fix: workers=K"),
        (["launcher=slurm"],
         r"out=.*: launcher=slurm writes the trials from other nodes, but .* temporary "
         r"directory\. Fix: out=DIR on a file system every node mounts"),
        (["launcher=slurm", "storage=sqlite:////dev/shm/segkit-x/study.db"],
         r"storage=sqlite:////dev/shm/segkit-x/study\.db: launcher=slurm runs the workers on "
         r"other nodes, which cannot open this SQLite file: .*Fix: storage=postgresql://"),
        (["launcher=slurm", "hydra.launcher.tasks_per_node=4"],
         r"hydra\.launcher\.tasks_per_node=4: a search job is one worker .* Fix: "),
    ],
    ids=["joblib", "slurm-out-in-tmp", "slurm-sqlite-in-shm", "slurm-ddp-tasks"],
)  # fmt: skip
def test_launchers_a_search_cannot_use_are_refused_in_one_line(
    tmp_path, demo_data_dir, monkeypatch, capsys, args, message
):
    out = tmp_path / "search"
    if len(args) > 1:  # out stands for a directory every node mounts here
        real = submit.node_local
        monkeypatch.setattr(submit, "node_local", lambda p: None if p == out else real(p))
    assert cli(_search_args(demo_data_dir, out, *args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.match(f"segkit search: error: {message}", err), err
    assert not out.exists()  # refused before anything was written


def test_slurm_search_submits_one_worker_per_job(tmp_path, demo_data_dir, monkeypatch):
    out = tmp_path / "search"
    monkeypatch.setattr(submit, "node_local", lambda p: None)  # tmp_path: a shared disk here
    monkeypatch.setenv(STORAGE_ENV, "restored after the test")
    overrides = [*TINY, "trainer.max_epochs=2", f"paths.data_dir={demo_data_dir}",
                 "model.depth=2,3", "model.kernel_size=3", "launcher=slurm",
                 "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90"]  # fmt: skip
    with intercepted_sbatch() as sent:
        code = run_search(overrides, {"out": str(out), "workers": 3, "sampler": "grid"})
    assert code == 1  # nothing ran: sbatch was not called

    # the executor's settings: conf/launcher/slurm.yaml, with the command line's overrides
    conf = yaml.safe_load((REPO / "conf" / "launcher" / "slurm.yaml").read_text())["hydra"]
    launcher = conf["launcher"]
    p = sent["parameters"]
    assert (p["partition"], p["time"]) == ("gpu", 90)
    assert (p["cpus_per_task"], p["mem"]) == (launcher["cpus_per_task"], f"{launcher['mem_gb']}GB")
    assert (p["gpus_per_node"], p["ntasks_per_node"], p["nodes"]) == (1, 1, 1)
    assert p["setup"] == [f"export OMP_NUM_THREADS={launcher['cpus_per_task']}"]
    parallel = min(3, launcher["array_parallelism"])  # submitit: no more than the jobs
    for line in (f"#SBATCH --array=0-2%{parallel}", "#SBATCH --partition=gpu",
                 "#SBATCH --job-name=demo", f"{out}/.submitit/"):  # fmt: skip
        assert line in sent["script"]

    # three submissions of submitit's, each one worker of this search: job 0, 1, 2
    subs = sent["submissions"]
    assert [s.args[2] for s in subs] == [0, 1, 2]
    # what sbatch would carry: the pickled submission, loaded back by submitit
    subs[1].dump(tmp_path / "job1.pkl")
    loaded = submitit.helpers.DelayedSubmission.load(tmp_path / "job1.pkl")
    assert isinstance(loaded.function, submit.SlurmWorkers) and loaded.args[2] == 1
    job = loaded.function.search_job
    assert not any("launcher" in o for o in job.overrides)
    assert {"model.depth=2,3", "model.kernel_size=3"} <= set(job.overrides)
    assert (job.values["workers"], job.values["storage"], job.values["out"]) == (1, None, str(out))
    # the URL reaches the jobs through the environment sbatch passes on
    url = f"sqlite:///{out / 'study.db'}"
    assert os.environ[STORAGE_ENV] == url

    # the study the jobs join: created here, with the overrides the jobs compose
    study = optuna.load_study(study_name="segkit_demo", storage=url)
    assert not any("launcher" in o for o in study.user_attrs["fixed"])
    assert study.trials == []


@pytest.mark.slow
def test_submitit_local_search_runs_two_worker_jobs(tmp_path, demo_data_dir):
    """A real 2-trial search through submitit's local executor (about a minute on 2 cores)."""
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "segkit.cli", *_search_args(demo_data_dir, out),
           "workers=2", "heartbeat=2", "launcher=submitit_local"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    trials = optuna.load_study(study_name="segkit_demo", storage=f"sqlite:///{out}/study.db").trials
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert sorted(t.params["model.depth"] for t in done) == [2, 3]
    # submitit's own record of the jobs: each finished with exit code 0, each ran one trial
    folders = sorted(p for p in (out / ".submitit").iterdir() if p.name.isdigit())
    assert len(folders) == 2
    started = []
    for folder in folders:
        job = submitit.local.local.LocalJob(folder=folder, job_id=folder.name)
        assert job.result() == 0
        started += [ln for ln in job.stdout().splitlines() if ln.startswith("trial ")
                    and " started: " in ln]  # fmt: skip
    assert sorted(int(ln.split()[1]) for ln in started) == sorted(t.number for t in done)
