"""``python train.py -m hparams_search=optuna`` names the command that runs the search now.

hydra-optuna-sweeper (its newest release, 1.3) pins ``optuna<3`` and cannot prune; the
search runs through ``segkit search`` on a current Optuna. The preset registers this Hydra
callback, which stops a multirun before any job starts with the command to run instead.
"""

from __future__ import annotations

import shlex
from typing import Any

from hydra.experimental.callback import Callback

from segkit.errors import ConfigError, refuse


class UseSegkitSearch(Callback):
    """Stops ``train.py -m`` with a search preset, printing the ``segkit search`` command."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        words = [*(str(o) for o in config.hydra.overrides.task), f"out={config.hydra.sweep.dir}"]
        command = "segkit search " + " ".join(shlex.quote(w) for w in words)
        raise SystemExit(
            refuse(
                "train.py",
                ConfigError(
                    "an Optuna search runs through segkit search (Optuna >= 4, pruning, a "
                    f"shared study). Fix: {command}"
                ),
            )
        )
