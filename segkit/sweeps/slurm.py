"""What ``launcher=slurm`` would submit, without a cluster (no ``sbatch`` is run)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
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


def preview_sbatch(overrides: Sequence[str] = (), *, num_jobs: int = 1) -> SbatchPreview:
    """Run hydra-submitit-launcher's real ``launch`` with submission intercepted.

    The launcher builds its submitit executor and validates every parameter exactly
    as on a cluster (a typo such as ``hydra.launcher.gpus=2`` fails here); only the
    final ``sbatch`` call is replaced by rendering the script.

    Args:
        overrides: Hydra overrides, e.g. ``["launcher=slurm", "hydra.launcher.partition=gpu"]``.
        num_jobs: Jobs in the array (sets ``--array=0-N%parallelism``).

    Raises:
        ConfigError: The config does not compose or its launcher is not ``submitit_slurm``.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict
    from submitit.slurm import slurm

    from segkit.config import compose
    from segkit.errors import ConfigError

    cfg = compose(overrides, hydra_config=True)
    if cfg.hydra.runtime.choices.get("hydra/launcher") != "submitit_slurm":
        raise ConfigError("the launcher is not SLURM: add launcher=slurm to the overrides")
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    launcher = instantiate(cfg.hydra.launcher)
    captured: dict[str, Any] = {}

    def capture(executor: Any, submissions: list) -> list:
        params = dict(executor.parameters)
        captured["parameters"] = params
        captured["script"] = slurm._make_sbatch_string(
            command=executor._submitit_command_str,
            folder=executor.folder,
            **{**params, "map_count": len(submissions) if len(submissions) > 1 else None},
        )
        return []

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        # launch() creates hydra.sweep.dir; the preview must not touch the real one
        with open_dict(cfg):
            cfg.hydra.sweep.dir = tmp
        launcher.setup(hydra_context=None, task_function=None, config=cfg)
        stack.enter_context(mock.patch.object(slurm.SlurmExecutor, "affinity", return_value=2))
        stack.enter_context(
            mock.patch.object(
                slurm.SlurmExecutor,
                "_internal_process_submissions",
                autospec=True,
                side_effect=capture,
            )
        )
        launcher.launch([[f"job={i}"] for i in range(num_jobs)], initial_job_idx=0)
    return SbatchPreview(
        launcher=launcher_cfg, parameters=captured["parameters"], script=captured["script"]
    )
