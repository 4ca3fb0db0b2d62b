"""Optuna pieces every process of a search shares: the storage, the pruner, the study.

A search's settings live in the study itself (its user attributes), so a trial process or a
worker that joins later, on any machine, builds the same pruner from the storage URL alone.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from segkit.errors import ConfigError

SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("asha", "hyperband", "median", "none")
# the storage URL reaches a trial process through its environment, so a database password
# never lands in a run directory's .hydra/overrides.yaml
STORAGE_ENV = "SEGKIT_SEARCH_STORAGE"
# seconds a SQLite writer waits for another process' lock (workers and trials share the file)
_SQLITE_TIMEOUT_S = 120


def require_optuna() -> Any:
    """``optuna`` (>= 4), or a ConfigError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "segkit search needs Optuna >= 4. Fix: pip install 'segkit[sweep]' (or 'optuna>=4')"
        ) from None
    if int(optuna.__version__.split(".")[0]) < 4:
        raise ConfigError(
            f"segkit search needs Optuna >= 4; optuna {optuna.__version__} is installed. Fix: "
            "pip install -U 'optuna>=4' (hydra-optuna-sweeper, which pins optuna<3, is not used)"
        )
    return optuna


def open_storage(
    url: str,
    *,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    retry: int = 0,
) -> Any:
    """An ``RDBStorage`` for ``url`` (SQLite, PostgreSQL, MySQL), with heartbeats when asked.

    A trial whose heartbeat stops is failed by the next worker, and queued again up to
    ``retry`` times (Optuna's ``RetryHeartbeatStaleTrialCallback``, formerly
    ``RetryFailedTrialCallback``).

    Raises:
        ConfigError: The URL is not a database URL Optuna can open.
    """
    optuna = require_optuna()
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": _SQLITE_TIMEOUT_S}}
    stale = None
    if retry:
        stale = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retry)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
                heartbeat_stale_trial_callback=stale,
            )
    except Exception as exc:  # SQLAlchemy's errors name the driver or the path
        raise ConfigError(
            f"storage={_hide_password(url)}: cannot open it ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}). Fix: a URL such as sqlite:///DIR/study.db "
            "or postgresql://USER:PASSWORD@HOST/DB (its driver installed: psycopg2)"
        ) from None


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not at or ":" not in auth:
        return url
    return f"{scheme}{sep}{auth.split(':', 1)[0]}:***@{host}"


def make_pruner(name: str, *, max_epochs: int | None = None) -> Any:
    """Optuna's pruner called ``name``: ``asha`` (successive halving, the default),
    ``hyperband``, ``median`` or ``none``. Steps are epochs (1 = after the first epoch).

    Every pruner makes its first decision after a quarter of ``max_epochs``: Optuna's own
    ``min_resource="auto"`` (1% of a finished trial's steps) means epoch 1 when steps are
    epochs, and on the demo benchmark that pruned the eventual best trial at epoch 1 (Dice
    0.25 there, 0.59 two epochs later). ``asha`` then keeps the best third at each rung
    (reduction factor 3: rungs at a quarter and three quarters of the schedule).

    Raises:
        ConfigError: An unknown name.
    """
    optuna = require_optuna()
    pruners = optuna.pruners
    first = max(1, (max_epochs or 0) // 4)
    if name == "asha":
        return pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    if name == "hyperband":
        return pruners.HyperbandPruner(
            min_resource=first, max_resource=max_epochs or "auto", reduction_factor=3
        )
    if name == "median":
        return pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=first)
    if name == "none":
        return pruners.NopPruner()
    raise ConfigError(f"pruner={name!r}: allowed: {', '.join(PRUNERS)}")


def load_study(study_name: str, storage: Any) -> Any:
    """The study ``study_name`` with the pruner its search recorded.

    Raises:
        ConfigError: No such study in the storage.
    """
    optuna = require_optuna()
    try:
        summary = next(s for s in storage.get_all_studies() if s.study_name == study_name)
    except StopIteration:
        raise ConfigError(
            f"no study {study_name!r} in the storage; studies there: "
            f"{', '.join(s.study_name for s in storage.get_all_studies()) or '(none)'}"
        ) from None
    attrs = summary.user_attrs
    pruner = make_pruner(attrs.get("pruner", "none"), max_epochs=attrs.get("max_epochs"))
    return optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)


def storage_from_env() -> str:
    """The storage URL a trial process was given (``$SEGKIT_SEARCH_STORAGE``).

    Raises:
        ConfigError: The variable is not set (the trial was not started by segkit search).
    """
    url = os.environ.get(STORAGE_ENV)
    if not url:
        raise ConfigError(
            f"callbacks.search reports to an Optuna study, but ${STORAGE_ENV} is not set. Fix: "
            "start trials with segkit search, or remove callbacks.search (~callbacks.search)"
        )
    return url
