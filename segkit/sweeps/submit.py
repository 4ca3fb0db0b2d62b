"""``segkit search ... launcher=slurm|submitit_local``: the search's workers as submitit jobs.

The jobs go through hydra-submitit-launcher's own ``launch``, built from the composed
``hydra.launcher`` (``conf/launcher/*.yaml`` and its ``hydra.launcher.*`` overrides), so a
search's jobs get what a ``train.py -m`` sweep's jobs get (partition, GPUs, time limit, setup
lines, resubmission, ``.submitit/`` folder). Only the job's body differs: instead of one
``train.py`` run, each job is one worker that joins the study, as the same ``segkit search``
command started by hand on that node would.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from segkit.errors import ConfigError

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        LocalLauncher,
        SlurmLauncher,
    )
except ImportError:
    raise ConfigError(
        "segkit search with a submitit launcher needs hydra-submitit-launcher. Fix: pip "
        "install 'segkit[sweep]'"
    ) from None

# file systems and directories that belong to one machine: other nodes cannot see them
_LOCAL_FS = {"tmpfs", "ramfs"}
_LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")


class SearchJob:
    """One worker of a search, as a submitted job runs it: ``segkit search`` with the
    command's overrides (launcher ones left out) and keys, in job mode.

    Attributes:
        run: ``segkit.sweeps.search.run_search`` (handed in by the search, which imports this
            module: pickled by name, so the job imports it where it runs).
        overrides: Hydra overrides of the search, without ``launcher=`` and
            ``hydra.launcher.*``.
        values: The command's keys; ``storage`` is not among them (a database password stays
            out of the pickled job: the URL reaches the job through its environment).
    """

    def __init__(
        self, run: Callable[..., int], overrides: Sequence[str], values: Mapping[str, Any]
    ) -> None:
        self.run = run
        self.overrides = list(overrides)
        self.values = dict(values)

    def __call__(self, job: int) -> int:
        return self.run(self.overrides, self.values, job=job)


class _Workers:
    """A submitit launcher whose jobs are search workers instead of Hydra jobs."""

    search_job: SearchJob

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict,
    ) -> int:
        return self.search_job(job_num)


class LocalWorkers(_Workers, LocalLauncher):
    """``launcher=submitit_local``: each worker a process of submitit's local executor."""


class SlurmWorkers(_Workers, SlurmLauncher):
    """``launcher=slurm``: each worker a task of one SLURM job array."""


WORKERS = {"submitit_local": LocalWorkers, "submitit_slurm": SlurmWorkers}


def node_local(path: Path) -> str | None:
    """Why ``path`` is on this machine only (a temporary directory, a RAM disk), else None.

    None does not prove that other nodes see the path; it says nothing rules it out.
    """
    path = Path(path).expanduser().resolve()
    local_dirs = {*_LOCAL_DIRS, tempfile.gettempdir(), os.environ.get("TMPDIR") or "/tmp"}
    for d in sorted(local_dirs):
        if path == Path(d) or Path(d) in path.parents:
            return f"{d} is this machine's temporary directory"
    mounts = Path("/proc/mounts")
    if mounts.is_file():
        best, fstype = Path("/"), ""
        for line in mounts.read_text().splitlines():
            parts = line.split()
            mount = Path(parts[1]) if len(parts) > 2 else None
            on_it = mount is not None and (mount == path or mount in path.parents)
            if on_it and len(mount.parts) >= len(best.parts):
                best, fstype = mount, parts[2]
        if fstype in _LOCAL_FS:
            return f"{best} is a {fstype} (memory of this machine)"
    return None


def check_launcher(cfg: Any, launcher: str, *, out: Path, url: str) -> str:
    """``launcher`` (the composed ``hydra/launcher``), checked: the submitit launcher the
    search's workers go through.

    Raises:
        ConfigError: The launcher cannot run a search (joblib; several tasks per job), or with
            SLURM the search directory or a SQLite storage is on a path other nodes
            cannot reach.
    """
    from segkit.sweeps.study import _hide_password

    if launcher not in WORKERS:
        raise ConfigError(
            f"launcher={cfg.hydra.runtime.choices.get('launcher')}: segkit search cannot run "
            f"its workers through {launcher}. Fix: "
            "workers=K for K processes on this machine, or launcher=submitit_local / "
            "launcher=slurm for K submitted jobs"
        )
    for key in ("tasks_per_node", "nodes"):
        value = cfg.hydra.launcher.get(key, 1)
        if value not in (None, 1):
            raise ConfigError(
                f"hydra.launcher.{key}={value}: a search job is one worker (trials one at a "
                f"time). Fix: hydra.launcher.{key}=1 and workers=K for K jobs"
            )
    if launcher == "submitit_slurm":
        why = node_local(out)
        if why:
            raise ConfigError(
                f"out={out}: launcher=slurm writes the trials from other nodes, but {why}. "
                "Fix: out=DIR on a file system every node mounts (e.g. /scratch/$USER/search1)"
            )
        if url.startswith("sqlite:///"):
            why = node_local(Path(url.removeprefix("sqlite:///")).parent)
            if why:
                raise ConfigError(
                    f"storage={_hide_password(url)}: launcher=slurm runs the workers on other "
                    f"nodes, which cannot open this SQLite file: {why}. Fix: "
                    "storage=postgresql://USER:PASSWORD@HOST/DB (a server every node reaches)"
                )
    return launcher


def submit_workers(cfg: Any, launcher: str, job: SearchJob, *, jobs: int, out: Path) -> list:
    """Submit ``jobs`` search workers through the configured submitit launcher and wait for
    them; returns each job's result (the worker's exit code).

    Args:
        cfg: The search's composed config (with ``hydra``); its ``hydra.launcher`` decides.
        launcher: ``submitit_local`` or ``submitit_slurm`` (`check_launcher`).
        job: What each job runs.
        jobs: The number of jobs (``workers=``).
        out: The search directory: the jobs' logs go to ``out/.submitit/<job id>/``.
    """
    import copy

    from omegaconf import OmegaConf, open_dict

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        # the launcher's submitit_folder is ${hydra.sweep.dir}/.submitit/%j
        cfg.hydra.sweep.dir = str(out)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_", None)
    workers = WORKERS[launcher](**params)
    workers.search_job = job
    workers.setup(hydra_context=None, task_function=None, config=cfg)
    return list(workers.launch([[] for _ in range(jobs)], initial_job_idx=0))
