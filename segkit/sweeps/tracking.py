"""What a run records in an experiment tracker (MLflow, Weights & Biases): its composed config,
its plan and its final Dice, beside the per-epoch metrics Lightning's logger records by itself.

Registered by ``logger=mlflow`` and ``logger=wandb`` (``callbacks.tracking``). A search trial
is named in each tracker by `trial_overrides` (``segkit search`` adds them to the trial's
command line); the study and trial number are also in the composed config
(``callbacks.search.study``, ``callbacks.search.trial``).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

# the run directory's files a tracker keeps beside the run (plan.txt: the plan summary)
RUN_FILES = ("plan.txt", ".hydra/config.yaml", ".hydra/overrides.yaml")


def trial_overrides(loggers: Iterable[str], study: str, trial: int) -> list[str]:
    """Overrides that file a search trial under its study in each tracker configured.

    MLflow: one experiment per study, one run per trial tagged ``optuna_study`` and
    ``optuna_trial``. W&B: the study is the runs' group and tag, one run per trial.

    Args:
        loggers: The keys of the config's ``logger`` node (``mlflow``, ``wandb``, ``csv``...).
        study: The Optuna study's name.
        trial: The trial's number.
    """
    loggers = set(loggers)
    out = []
    if "mlflow" in loggers:
        out += [
            f"++logger.mlflow.experiment_name='{study}'",
            f"++logger.mlflow.run_name=trial-{trial}",
            f"++logger.mlflow.tags.optuna_study='{study}'",
            f"++logger.mlflow.tags.optuna_trial='{trial}'",  # a tag is text
        ]
    if "wandb" in loggers:
        out += [
            f"++logger.wandb.group='{study}'",
            f"++logger.wandb.name=trial-{trial}",
            f"++logger.wandb.tags=['{study}']",
        ]
    return out


class WandbLogger(pl.loggers.WandbLogger):
    """Lightning's ``WandbLogger`` whose run config is the composed config (`TrackingRecord`
    writes it): what Lightning hands the logger (the LightningModule's saved arguments: the
    normalised network spec, ...) goes under ``module``, so that ``model.depth`` or
    ``model.channels`` in W&B are the YAML's values, not a merge with the spec's lists."""

    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        super().log_hyperparams({"module": params})


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


class _MLflow:
    """How MLflow keeps each fact: flat parameters, artifacts, metrics."""

    @staticmethod
    def start(logger: Any, config: Mapping[str, Any], files: list[Path], run_dir: Path) -> None:
        # MLflow keeps a parameter's value to 6000 characters
        logger.log_hyperparams({k: str(v)[:6000] for k, v in _flat(dict(config)).items()})
        for path in files:
            logger.experiment.log_artifact(logger.run_id, str(path))

    @staticmethod
    def end(logger: Any, final: Mapping[str, float], step: int) -> None:
        logger.log_metrics(dict(final), step=step)

    @staticmethod
    def close(logger: Any, exit_code: int) -> None:
        """Lightning's logger ends the MLflow run."""


class _Wandb:
    """How W&B keeps each fact: the nested config, run files, the summary."""

    @staticmethod
    def start(logger: Any, config: Mapping[str, Any], files: list[Path], run_dir: Path) -> None:
        run = logger.experiment
        run.config.update(dict(config), allow_val_change=True)
        for path in files:  # offline: kept in the run's files/, uploaded by `wandb sync`
            run.save(str(path), base_path=str(run_dir), policy="now")

    @staticmethod
    def end(logger: Any, final: Mapping[str, float], step: int) -> None:
        # the run's final values, what W&B's run table shows, not another history row
        logger.experiment.summary.update(dict(final))

    @staticmethod
    def close(logger: Any, exit_code: int) -> None:
        # Lightning leaves the W&B run open for the process (wandb finishes it at exit); a
        # second run in the same process (a multirun's basic launcher, a test) would join it.
        # finalize first: with log_model, Lightning logs the checkpoints there
        if exit_code == 0:
            logger.finalize("success")
        logger.experiment.finish(exit_code=exit_code)


_WRITERS: tuple[tuple[type, Any], ...] = (
    (pl.loggers.MLFlowLogger, _MLflow),
    (pl.loggers.WandbLogger, _Wandb),
)


def _trackers(trainer: pl.Trainer) -> list[tuple[Any, Any]]:
    out = []
    for logger in trainer.loggers:
        writer = next((w for kind, w in _WRITERS if isinstance(logger, kind)), None)
        if writer is not None:
            out.append((logger, writer))
    return out


def composed_config(run_dir: Path) -> dict[str, Any]:
    """The run's composed config as Hydra saved it (``.hydra/config.yaml``), without
    ``hydra``; empty when the run has none (a run not started by ``train.py``)."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}
    return {k: v for k, v in config.items() if k != "hydra"}


def final_dice(history: list[Mapping[str, Any]]) -> dict[str, float]:
    """The best and the last mean validation Dice of a run's validation history."""
    return {
        "dice_mean_best": max(h["dice_mean"] for h in history),
        "dice_mean_final": history[-1]["dice_mean"],
    }


class TrackingRecord(pl.Callback):
    """At the start of fit: the composed config and the run's files (``plan.txt``, the config
    and overrides); at its end: the best and final mean validation Dice. Each tracker keeps
    them its own way (MLflow: parameters, artifacts, metrics; W&B: config, files, summary)."""

    def __init__(self) -> None:
        self._started: list[tuple[Any, Any]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.default_root_dir)
        config = composed_config(run_dir)
        files = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
        self._started = _trackers(trainer)
        for logger, writer in self._started:
            writer.start(logger, config, files, run_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = getattr(pl_module, "val_history", None)
        if not trainer.is_global_zero or not history:
            return
        final = final_dice(history)
        for logger, writer in self._started:
            writer.end(logger, final, int(trainer.global_step))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close(exit_code=0)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close(exit_code=1)

    def _close(self, exit_code: int) -> None:
        started, self._started = self._started, []
        for logger, writer in started:
            writer.close(logger, exit_code=exit_code)
