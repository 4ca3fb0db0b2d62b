"""What ``launcher=slurm`` would submit, without a cluster (no ``sbatch`` is run).

submitit has no public API that renders the sbatch script without submitting it, so the
preview uses two of its private names (``slurm._make_sbatch_string`` and
``SlurmExecutor._internal_process_submissions``). `check_submitit_internals` verifies
them before use, so a submitit release that changes them stops the preview with a
message saying so instead of a traceback; real submission never uses them.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock


@dataclass(frozen=True)
class SbatchPreview:
    """The submission hydra-submitit-launcher would make for a multirun.

    Attributes:
        launcher: ``hydra.launcher`` resolved (what the config asks for).
        parameters: The submitit ``SlurmExecutor`` parameters after the launcher's
            own renaming (``timeout_min`` → ``time``, ``mem_gb`` → ``mem``...).
        script: The sbatch script of the job array, as submitit writes it.
    """

    launcher: dict[str, Any]
    parameters: dict[str, Any]
    script: str


def check_submitit_internals() -> None:
    """Checks the private submitit names the preview relies on still look as expected.

    Raises:
        ConfigError: They are missing or their signatures changed (names what changed).
    """
    import submitit
    from submitit.slurm import slurm

    from segkit.errors import ConfigError

    problems = []
    render = getattr(slurm, "_make_sbatch_string", None)
    if not callable(render):
        problems.append("submitit.slurm.slurm._make_sbatch_string no longer exists")
    else:
        params = inspect.signature(render).parameters
        problems += [
            f"_make_sbatch_string lost its {name!r} argument"
            for name in ("command", "folder", "map_count")
            if name not in params
        ]
    executor = slurm.SlurmExecutor
    # defined on SlurmExecutor itself: the one that turns submissions into sbatch calls
    process = vars(executor).get("_internal_process_submissions")
    if not callable(process):
        problems.append("SlurmExecutor._internal_process_submissions no longer exists")
    elif len(inspect.signature(process).parameters) != 2:
        problems.append(
            "SlurmExecutor._internal_process_submissions no longer takes (self, submissions)"
        )
    problems += [
        f"SlurmExecutor.{name} no longer exists"
        for name in ("_submitit_command_str", "affinity")
        if not hasattr(executor, name)
    ]
    if problems:
        raise ConfigError(
            f"segkit plan's SLURM preview relies on private submitit internals that changed in "
            f"submitit {submitit.__version__}: {'; '.join(problems)}. Submitting with "
            "launcher=slurm is not affected. Fix: install the submitit version segkit was "
            "tested with (pip install 'submitit==1.5.4') to preview, or update "
            "segkit/sweeps/slurm.py."
        )


@contextmanager
def intercepted_sbatch() -> Iterator[dict[str, Any]]:
    """Within it, submitit's ``SlurmExecutor`` runs no ``sbatch``: the dict it yields receives
    what would have been submitted: ``parameters`` (the executor's), ``script`` (the sbatch
    script of the job array) and ``submissions`` (submitit's ``DelayedSubmission`` objects,
    one per job). A submission returns no job.

    Raises:
        ConfigError: The installed submitit changed the internals this relies on.
    """
    from submitit.slurm import slurm

    check_submitit_internals()
    captured: dict[str, Any] = {}

    def capture(executor: Any, submissions: list) -> list:
        params = dict(executor.parameters)
        captured["parameters"] = params
        captured["submissions"] = list(submissions)
        captured["script"] = slurm._make_sbatch_string(
            command=executor._submitit_command_str,
            folder=executor.folder,
            **{**params, "map_count": len(submissions) if len(submissions) > 1 else None},
        )
        return []

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(slurm.SlurmExecutor, "affinity", return_value=2))
        stack.enter_context(
            mock.patch.object(
                slurm.SlurmExecutor,
                "_internal_process_submissions",
                autospec=True,
                side_effect=capture,
            )
        )
        yield captured


def preview_sbatch(overrides: Sequence[str] = (), *, num_jobs: int = 1) -> SbatchPreview:
    """Run hydra-submitit-launcher's real ``launch`` with submission intercepted.

    The launcher builds its submitit executor and validates every parameter exactly
    as on a cluster (a typo such as ``hydra.launcher.gpus=2`` fails here); only the
    final ``sbatch`` call is replaced by rendering the script.

    Args:
        overrides: Hydra overrides, e.g. ``["launcher=slurm", "hydra.launcher.partition=gpu"]``.
        num_jobs: Jobs in the array (sets ``--array=0-N%parallelism``).

    Raises:
        ConfigError: The config does not compose, its launcher is not ``submitit_slurm``,
            or the installed submitit changed the internals the preview uses.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    from segkit.config import compose
    from segkit.errors import ConfigError

    cfg = compose(overrides, hydra_config=True)
    if cfg.hydra.runtime.choices.get("hydra/launcher") != "submitit_slurm":
        raise ConfigError("the launcher is not SLURM: add launcher=slurm to the overrides")
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    launcher = instantiate(cfg.hydra.launcher)
    with tempfile.TemporaryDirectory() as tmp, intercepted_sbatch() as captured:
        # launch() creates hydra.sweep.dir; the preview must not touch the real one
        with open_dict(cfg):
            cfg.hydra.sweep.dir = tmp
        launcher.setup(hydra_context=None, task_function=None, config=cfg)
        launcher.launch([[f"job={i}"] for i in range(num_jobs)], initial_job_idx=0)
    if "script" not in captured:
        raise ConfigError(
            "segkit plan's SLURM preview intercepted no submission: the installed submitit "
            "no longer submits through SlurmExecutor._internal_process_submissions. "
            "Submitting with launcher=slurm is not affected. Fix: pip install "
            "'submitit==1.5.4' to preview, or update segkit/sweeps/slurm.py."
        )
    return SbatchPreview(
        launcher=launcher_cfg, parameters=captured["parameters"], script=captured["script"]
    )
