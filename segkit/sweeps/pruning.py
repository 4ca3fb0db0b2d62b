"""The Lightning callback of a search trial: validation Dice per epoch to Optuna, early stop
when the study's pruner says so.

``segkit search`` registers it on each trial's command line (``++callbacks.search...``); the
trial process reconnects to the study through the storage URL in its environment and the
trial number it is given.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import pytorch_lightning as pl

from segkit.sweeps.study import load_study, open_storage, storage_from_env

log = logging.getLogger("segkit")

# user attributes a trial process writes; the search and its report read them back
PRUNED_AT = "pruned_at_epoch"
STEP_TIME = "step_time_s"
STEPS = "steps"


class OptunaReport(pl.Callback):
    """Report ``monitor`` after every validation; stop training when the trial is pruned.

    Steps are epochs trained (1 after the first epoch), so pruners compare trials at equal
    training. A pruned trial ends as a normal run (checkpoints, ``metrics.json``) and says
    where it was stopped; the search then tells Optuna it was pruned.

    Args:
        study: The study's name.
        trial: The trial's number in the study.
        monitor: The logged metric to report (``val/dice_mean``).
    """

    def __init__(self, *, study: str, trial: int, monitor: str = "val/dice_mean") -> None:
        self.study_name = study
        self.number = int(trial)
        self.monitor = monitor
        self._trial: Any = None
        self._started = 0.0
        self._step_times: list[float] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._trial is not None or not trainer.is_global_zero:
            return
        import optuna

        storage = open_storage(storage_from_env())
        study = load_study(self.study_name, storage)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, self.number)
        self._trial = optuna.trial.Trial(study, trial_id)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._step_times.append(time.perf_counter() - self._started)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # not on_validation_epoch_end: callbacks run that hook before the module logs the
        # epoch's Dice, so it would read the previous validation's value
        if trainer.sanity_checking or self._trial is None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        epoch = trainer.current_epoch + 1
        self._trial.report(float(value), step=epoch)
        if self._trial.should_prune():
            self._trial.set_user_attr(PRUNED_AT, epoch)
            log.info(
                "trial %d pruned at epoch %d (%s %.4f): stopping early",
                self.number,
                epoch,
                self.monitor,
                float(value),
            )
            print(f"trial {self.number} pruned at epoch {epoch}: stopping early", flush=True)
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._trial is None:
            return
        self._trial.set_user_attr(STEPS, int(trainer.global_step))
        # the first step pays for lazy initialisation; the median of the rest is the step
        times = self._step_times[1:] or self._step_times
        if times:
            self._trial.set_user_attr(STEP_TIME, round(statistics.median(times), 5))
