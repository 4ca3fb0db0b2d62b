"""What a run records in an experiment tracker (MLflow): its composed config, its plan and its
final Dice, beside the per-epoch metrics Lightning's logger records by itself.

Registered by ``logger=mlflow`` (``callbacks.tracking``); a search trial's study and trial
number arrive as the logger's tags (``segkit search`` adds them to the trial's command line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _trackers(trainer: pl.Trainer) -> list[Any]:
    return [lg for lg in trainer.loggers if isinstance(lg, pl.loggers.MLFlowLogger)]


class TrackingRecord(pl.Callback):
    """At the start of fit: the composed config as parameters and ``plan.txt`` as an
    artifact; at its end: the best and final mean validation Dice as metrics."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from omegaconf import OmegaConf

        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.default_root_dir)
        composed = run_dir / ".hydra" / "config.yaml"
        config = OmegaConf.to_container(OmegaConf.load(composed)) if composed.is_file() else {}
        params = {k: v for k, v in _flat(config).items() if not k.startswith("hydra.")}
        for logger in _trackers(trainer):
            # MLflow keeps a parameter's value to 6000 characters
            logger.log_hyperparams({k: str(v)[:6000] for k, v in params.items()})
            for name in ("plan.txt", ".hydra/config.yaml", ".hydra/overrides.yaml"):
                if (run_dir / name).is_file():
                    logger.experiment.log_artifact(logger.run_id, str(run_dir / name))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = getattr(pl_module, "val_history", None)
        if not trainer.is_global_zero or not history:
            return
        final = {
            "dice_mean_best": max(h["dice_mean"] for h in history),
            "dice_mean_final": history[-1]["dice_mean"],
        }
        for logger in _trackers(trainer):
            logger.log_metrics(final, step=int(trainer.global_step))
