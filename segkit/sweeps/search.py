"""``segkit search``: an Optuna study whose trials are ``train.py`` runs, pruned early.

One command is one worker pool: ``workers`` trials at a time, each a ``python train.py``
process with its own run directory under ``OUT/trials/N``. Every worker, in this process or
in another one started with the same command (another shell, another machine with the same
storage URL), asks the shared study for the next trial, so they cooperate without a
scheduler of their own:

- a combination that cannot be built for its patch or exceeds ``planner.memory_gb`` is never
  launched (told to Optuna as failed, with the reason);
- a parameter set already finished or running is never launched again;
- each running trial's worker records a heartbeat; a worker killed mid-trial leaves a trial
  whose heartbeat stops, which the next worker marks failed (``RetryFailedTrialCallback``
  queues it again when ``retry`` allows), so running the command again completes the study.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from segkit.errors import ConfigError
from segkit.fsio import save_json_atomic
from segkit.sweeps.preflight import Preflight, preflight
from segkit.sweeps.pruning import PRUNED_AT, STEP_TIME, STEPS
from segkit.sweeps.space import SearchSpace, parse_space
from segkit.sweeps.study import (
    PRUNERS,
    SAMPLERS,
    STORAGE_ENV,
    _hide_password,
    make_pruner,
    open_storage,
    require_optuna,
)
from segkit.sweeps.tracking import trial_overrides
from segkit.table import format_table

# user attributes the search writes on a trial
RUN_DIR = "run_dir"  # set when the trial is launched
NOT_RUN = "not_run"  # why a drawn trial was not launched (infeasible, duplicate, surplus)
ERROR = "error"
SEARCH_FILE = "search.json"
PREFLIGHT_FILE = "preflight.json"
# trials of this command failing one after another before it stops
_MAX_FAILURES_IN_ROW = 2
# draws in a row that may be refused (infeasible or duplicate) before an endless space gives up
_MAX_REFUSED = 100


@dataclass(frozen=True)
class SearchSettings:
    """What ``segkit search`` was asked to do (command-line keys over the preset's ``search``).

    Attributes:
        out: The search directory (trials under ``out/trials/N``).
        trials: Trials to finish (completed or pruned); None: every feasible combination.
        sampler: ``tpe``, ``grid`` or ``random``.
        pruner: ``asha``, ``hyperband``, ``median`` or ``none``.
        storage: Optuna storage URL (None: ``sqlite:///OUT/study.db``).
        workers: Trials run at once by this command.
        study: The study name (None: ``segkit_<task_name>``).
        retry: Times a trial whose worker died is queued again.
        heartbeat: Seconds between a running trial's heartbeats.
        grace: Seconds without a heartbeat before a trial counts as dead (None: 2 heartbeats).
        sampler_seed: The sampler's seed.
        n_startup_trials: TPE's random trials before it models the results.
        direction: ``maximize`` or ``minimize`` the optimised metric.
    """

    out: Path
    trials: int | None = None
    sampler: str = "tpe"
    pruner: str = "asha"
    storage: str | None = None
    workers: int = 1
    study: str | None = None
    retry: int = 0
    heartbeat: int = 30
    grace: int | None = None
    sampler_seed: int | None = None
    n_startup_trials: int = 10
    direction: str = "maximize"

    def check(self) -> None:
        """Raises ConfigError naming the key and the allowed values."""
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler={self.sampler!r}; allowed: {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"pruner={self.pruner!r}; allowed: {', '.join(PRUNERS)}")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"direction={self.direction!r}; allowed: maximize, minimize")
        for key in ("workers", "heartbeat"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: must be >= 1")
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"trials={self.trials}: must be >= 1")
        if self.retry < 0:
            raise ConfigError(f"retry={self.retry}: must be >= 0")
        if self.grace is not None and self.grace <= self.heartbeat:
            raise ConfigError(
                f"grace={self.grace} must be longer than heartbeat={self.heartbeat} (seconds); "
                f"Fix: grace={2 * self.heartbeat}"
            )


@dataclass
class _Search:
    """State shared by the worker threads of one command."""

    settings: SearchSettings
    space: SearchSpace
    study: Any
    storage: Any
    url: str
    metric: str
    train_py: Path
    feasible: list[dict[str, Any]]
    checked: dict[tuple, Preflight] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    refused: int = 0
    procs: set = field(default_factory=set)
    loggers: tuple[str, ...] = ()
    failures_in_row: int = 0
    stop: str = ""


def _key(params: Mapping[str, Any], keys: Sequence[str]) -> tuple:
    return tuple((k, repr(params.get(k))) for k in keys)


def _death_signal() -> Any:
    """A function run in a trial process before it starts: it gets SIGKILL when the worker
    that started it dies (Linux ``PR_SET_PDEATHSIG``), so a killed worker leaves no orphan
    training; None where there is no ``prctl``."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not after fork
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)


def _compose_search(overrides: Sequence[str]) -> tuple[Any, SearchSpace]:
    """The composed config of the fixed overrides, and the search space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from segkit.config import compose

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"overrides: {' '.join(str(exc).split())}") from None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = compose(fixed, hydra_config=True)
    preset = dict(cfg.hydra.sweeper.get("params") or {})
    space = parse_space(overrides, preset)
    # where the workers run is no part of what a trial runs (nor of the study's identity)
    return cfg, replace(space, fixed=tuple(without_launcher(space.fixed)))


def without_launcher(overrides: Sequence[str]) -> list[str]:
    """The overrides less ``launcher=...`` and ``hydra.launcher.*``."""
    return [
        o
        for o in overrides
        if _key_of(o) != "launcher" and not _key_of(o).startswith("hydra.launcher.")
    ]


def _key_of(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def resolve_settings(values: Mapping[str, Any], cfg: Any) -> SearchSettings:
    """Command-line keys over the preset's ``search`` node over the built-in defaults."""
    from omegaconf import OmegaConf

    preset = OmegaConf.to_container(cfg.get("search") or OmegaConf.create({}), resolve=True)
    known = set(SearchSettings.__dataclass_fields__)
    unknown = sorted(set(preset) - known)
    if unknown:
        raise ConfigError(
            f"search.{unknown[0]}: unknown search setting; allowed: {', '.join(sorted(known))}"
        )
    merged = {**preset, **{k: v for k, v in values.items() if v is not None}}
    if "out" not in merged:
        raise ConfigError("missing out=DIR: the search directory (trials, study.db, report)")
    merged["out"] = Path(merged["out"]).expanduser().resolve()
    settings = SearchSettings(**merged)
    settings.check()
    return settings


def _preflight_all(search_overrides: Sequence[str], space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for params in space.combinations():
        overrides = [*search_overrides, *space.overrides(params)]
        rows.append({"values": params, "overrides": space.overrides(params),
                     **preflight(overrides).to_dict()})  # fmt: skip
    return rows


def preflight_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The pre-flight rows as a table: what each combination needs, or why it never runs."""
    header = ("#", "overrides", "status", "params", "GFLOPs", "memory GB", "reason")
    body = [
        (
            str(i),
            " ".join(r["overrides"]),
            "feasible" if r["feasible"] else "never launched",
            f"{r['params']:,}" if r["feasible"] else "",
            f"{r['gflops']:,.2f}" if r["feasible"] else "",
            f"{r['memory_gb']:.3g}" if r["memory_gb"] else "",
            r["reason"],
        )
        for i, r in enumerate(rows)
    ]
    return format_table(header, body)


def _train_py() -> Path:
    from segkit.config import conf_dir

    path = conf_dir().parent / "train.py"
    if not path.is_file():
        raise ConfigError(
            f"segkit search runs trials with train.py beside conf/ ({path}), which is missing. "
            "Fix: run from segkit's repository, or set SEGKIT_CONF to its conf/"
        )
    return path


def _sampler(settings: SearchSettings, space: SearchSpace, seed: int | None) -> Any:
    optuna = require_optuna()
    if settings.sampler == "grid":

        class Grid(optuna.samplers.GridSampler):
            # GridSampler.after_trial calls study.stop() when the grid is used up, which
            # raises outside Study.optimize; the search itself knows when it is done
            def after_trial(self, *args: Any) -> None:
                return None

        return Grid(space.grid(), seed=seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials)


def _open_study(
    settings: SearchSettings, space: SearchSpace, cfg: Any, name: str, url: str
) -> tuple[Any, Any]:
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(
        url,
        heartbeat_s=settings.heartbeat,
        grace_s=settings.grace or 2 * settings.heartbeat,
        retry=settings.retry,
    )
    recorded = {
        "sampler": settings.sampler,
        "pruner": settings.pruner,
        "direction": settings.direction,
        "space": [d.source for d in space.dimensions],
        "fixed": list(space.fixed),
        "max_epochs": int(cfg.trainer.max_epochs),
    }
    existing = next((s for s in storage.get_all_studies() if s.study_name == name), None)
    if existing is not None:
        differs = {
            k: (existing.user_attrs.get(k), v)
            for k, v in recorded.items()
            if existing.user_attrs.get(k) != v
        }
        if differs:
            key, (was, now) = next(iter(differs.items()))
            raise ConfigError(
                f"study {name!r} in {_hide_password(url)} was started with {key}={was}, this "
                f"command has {key}={now}: joining it would mix two searches. Fix: the same "
                "command as the study's, or another study=NAME (or out=DIR)"
            )
    # a joining process draws other values than the first one (same seed, other trials seen)
    seed = settings.sampler_seed
    if seed is not None and existing is not None:
        seed += len(storage.get_all_trials(existing._study_id, deepcopy=False))
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=settings.direction,
        sampler=_sampler(settings, space, seed),
        pruner=make_pruner(settings.pruner, max_epochs=recorded["max_epochs"]),
        load_if_exists=True,
    )
    if existing is None:
        for k, v in recorded.items():
            study.set_user_attr(k, v)
    return study, storage


def run_search(
    overrides: Sequence[str], values: Mapping[str, Any], *, job: int | None = None
) -> int:
    """Run (or join) the search; returns 0 when the study has its trials, else 1.

    With ``launcher=submitit_local`` or ``launcher=slurm`` the ``workers`` run as that many
    submitted jobs (one worker each, `segkit.sweeps.submit`), and this process waits for them.

    Args:
        overrides: Hydra overrides of ``conf/train.yaml``, sweeps among them.
        values: The command's keys (``out``, ``trials``, ``sampler``, ...; None: default).
        job: Set in a submitted worker job (its index): one worker, the storage URL from the
            environment.

    Raises:
        ConfigError: A setting, an override or the storage is wrong, or no combination can
            be launched.
    """
    optuna = require_optuna()
    # heartbeats from ask/tell workers (not Study.optimize) are what this module is built on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    cfg, space = _compose_search(overrides)
    settings = resolve_settings(values, cfg)
    name = settings.study or f"segkit_{cfg.task_name}"
    url = settings.storage or f"sqlite:///{settings.out / 'study.db'}"
    if job is not None:
        url = os.environ.get(STORAGE_ENV) or url
        if settings.sampler_seed is not None:  # jobs starting together draw different values
            settings = replace(settings, sampler_seed=settings.sampler_seed + job)
    launcher = None
    if job is None and launcher_of(cfg) != "basic":
        from segkit.sweeps.submit import check_launcher

        launcher = check_launcher(cfg, launcher_of(cfg), out=settings.out, url=url)
    settings.out.mkdir(parents=True, exist_ok=True)
    metric = str(cfg.get("optimized_metric") or "val/dice_mean")
    train_py = _train_py()

    rows = _preflight_all(space.fixed, space)
    print(f"pre-flight of {len(rows)} combination(s) (nothing is trained):")
    print(preflight_table(rows), flush=True)
    feasible = [r["values"] for r in rows if r["feasible"]]
    if rows and not feasible:
        raise ConfigError(f"no combination can be launched; the first: {rows[0]['reason']}")
    trials = settings.trials
    if space.enumerable and (trials is None or trials > len(feasible)):
        if trials is not None:
            print(f"trials={trials}: the space has {len(feasible)} feasible combinations; "
                  f"running those")  # fmt: skip
        trials = len(feasible)
    if trials is None:
        raise ConfigError("trials=N is needed: the space has a range, so it has no end of its own")
    settings = replace(settings, trials=trials)
    study, storage = _open_study(settings, space, cfg, name, url)
    if "mlflow" in (cfg.get("logger") or {}):
        _mlflow_experiment(cfg, name)
    save_json_atomic(settings.out / PREFLIGHT_FILE, rows)
    save_json_atomic(
        settings.out / SEARCH_FILE,
        {
            "study": name,
            "storage": _hide_password(url),
            "trials": trials,
            "metric": metric,
            "direction": settings.direction,
            "sampler": settings.sampler,
            "pruner": settings.pruner,
            "space": [d.source for d in space.dimensions],
            "keys": list(space.keys),
            "fixed": list(space.fixed),
        },
    )
    search = _Search(
        settings=settings,
        space=space,
        study=study,
        storage=storage,
        url=url,
        metric=metric,
        train_py=train_py,
        feasible=feasible,
        loggers=tuple(cfg.get("logger") or {}),
        checked={_key(r["values"], space.keys): Preflight(**_pf(r)) for r in rows},
    )
    print(
        f"study {name!r} in {_hide_password(url)}: {trials} trials, sampler={settings.sampler}, "
        f"pruner={settings.pruner}, {settings.workers} worker(s); trials in "
        f"{settings.out / 'trials'}",
        flush=True,
    )
    if launcher is not None:
        return _submit(search, cfg, launcher, overrides, values)
    threads = [
        threading.Thread(target=_worker, args=(search,), name=f"worker-{i}", daemon=True)
        for i in range(1 if job is not None else settings.workers)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=1.0)
    except KeyboardInterrupt:
        for proc in list(search.procs):
            proc.terminate()
        raise
    return _summary(search)


def _submit(
    search: _Search, cfg: Any, launcher: str, overrides: Sequence[str], values: Mapping[str, Any]
) -> int:
    """Run the search's workers as submitted jobs and wait for them."""
    from segkit.sweeps.submit import SearchJob, submit_workers

    settings = search.settings
    job = SearchJob(
        run_search,
        without_launcher(overrides),
        {**values, "out": str(settings.out), "storage": None, "workers": 1},
    )
    # the URL (a database password, perhaps) reaches the jobs through their environment
    # (sbatch passes this one), not through the pickled job in .submitit/
    os.environ[STORAGE_ENV] = search.url
    folder = settings.out / ".submitit"
    print(f"submitting {settings.workers} worker job(s) through {launcher}; their logs: "
          f"{folder}/<job id>/; waiting for them", flush=True)  # fmt: skip
    try:
        codes = submit_workers(cfg, launcher, job, jobs=settings.workers, out=settings.out)
    except Exception as exc:  # submitit's FailedJobError holds the job's whole traceback
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        print(f"a worker job failed: {lines[-1] if lines else type(exc).__name__}; "
              f"logs: {folder}", flush=True)  # fmt: skip
        codes = [1]
    if any(codes):
        print(f"worker job exit codes: {codes}; logs: {folder}", flush=True)
    return _summary(search)


def launcher_of(cfg: Any) -> str:
    """The ``hydra/launcher`` the composed config selects (``basic``, ``joblib``,
    ``submitit_local``, ``submitit_slurm``)."""
    return str(cfg.hydra.runtime.choices.get("hydra/launcher") or "basic")


def _mlflow_experiment(cfg: Any, name: str) -> None:
    """Create the study's MLflow experiment (and the store's tables) once, before trials
    start, so concurrent trials do not race to create them."""
    from omegaconf import OmegaConf

    try:
        import mlflow
    except ImportError:
        raise ConfigError("logger=mlflow needs MLflow. Fix: pip install mlflow") from None
    uri = str(OmegaConf.select(cfg, "logger.mlflow.tracking_uri"))
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(uri)
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name)
        except mlflow.exceptions.MlflowException:
            if client.get_experiment_by_name(name) is None:  # not another worker's doing
                raise


def _pf(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in Preflight.__dataclass_fields__}


def _trial_sets(search: _Search) -> tuple[list, list, list]:
    """(finished, running, all) trials; finished and running count launched trials only."""
    from optuna.trial import TrialState

    trials = search.study.get_trials(deepcopy=False)
    launched = [t for t in trials if t.user_attrs.get(RUN_DIR)]
    finished = [t for t in launched if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    running = [t for t in launched if t.state == TrialState.RUNNING]
    return finished, running, trials


def _next(search: _Search) -> tuple[str, Any]:
    """``("run", trial)``, ``("wait", None)`` or ``("done", message)``; under ``search.lock``."""
    import optuna
    from optuna.trial import TrialState

    keys = search.space.keys
    optuna.storages.fail_stale_trials(search.study)
    finished, running, _ = _trial_sets(search)
    want = search.settings.trials
    if len(finished) >= want:
        return "done", f"{len(finished)} trials finished (trials={want})"
    remaining: list[dict[str, Any]] = []
    if search.space.enumerable:
        covered = {_key(t.params, keys) for t in finished + running}
        remaining = [p for p in search.feasible if _key(p, keys) not in covered]
        if not remaining:
            if running:
                return "wait", None
            return "done", "every feasible combination has run"
    if len(finished) + len(running) >= want:
        return "wait", None  # the others' trials may still fail and need a replacement
    trial = search.study.ask(search.space.distributions())
    search.storage.record_heartbeat(trial._trial_id)
    params = dict(trial.params)
    why = _refusal(search, trial, params)
    if why is None:
        search.refused = 0
        return "run", trial
    trial.set_user_attr(NOT_RUN, why)
    search.study.tell(trial, state=TrialState.FAIL)
    search.refused += 1
    waiting = [t for t in search.study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    if remaining and not waiting:
        # the sampler drew a combination that cannot or need not run: the next trial takes
        # the first one still to run, so a finite space ends without endless redraws
        search.study.enqueue_trial(remaining[0])
    elif search.refused >= _MAX_REFUSED:
        return "done", f"{_MAX_REFUSED} draws in a row were refused; the last: {why}"
    return "refused", why


def _refusal(search: _Search, trial: Any, params: dict[str, Any]) -> str | None:
    """Why the drawn ``trial`` must not be launched, or None."""
    from optuna.trial import TrialState

    keys = search.space.keys
    listed = {d.key for d in search.space.dimensions if d.choices is not None}
    key = _key(params, keys)
    found = search.checked.get(_key({k: params[k] for k in listed}, keys))
    if found is None or not search.space.enumerable:
        found = search.checked.get(key)
    if found is None:
        found = search.checked[key] = preflight([*search.space.fixed,
                                                 *search.space.overrides(params)])  # fmt: skip
    if not found.feasible:
        return f"infeasible: {found.reason}"
    finished, running, _ = _trial_sets(search)
    for other in finished + running:
        if other.number != trial.number and _key(other.params, keys) == key:
            return f"duplicate of trial {other.number} ({other.state.name.lower()})"
    fresh = search.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for other in fresh:
        if other.number < trial.number and _key(other.params, keys) == key:
            return f"duplicate of trial {other.number} (running)"
    others = [t for t in finished + running if t.number != trial.number]
    if len(others) >= search.settings.trials:
        return f"surplus: trials={search.settings.trials} already finished or running"
    return None


def _worker(search: _Search) -> None:
    poll = min(search.settings.heartbeat, 5)
    while True:
        with search.lock:
            action, detail = ("done", search.stop) if search.stop else _next(search)
            trial = detail if action == "run" else None
            if trial is not None:
                _mark_launched(search, trial)
        if action == "done":
            if threading.current_thread().name == "worker-0":
                print(f"search done: {detail}", flush=True)
            return
        if action == "refused":
            print(f"not launched: {detail}", flush=True)
            continue
        if action == "wait":
            time.sleep(poll)
            continue
        _run_trial(search, trial)


def _run_dir(search: _Search, trial: Any) -> Path:
    return search.settings.out / "trials" / str(trial.number)


def _mark_launched(search: _Search, trial: Any) -> None:
    pf = search.checked.get(_key(trial.params, search.space.keys))
    trial.set_user_attr(RUN_DIR, str(_run_dir(search, trial)))
    trial.set_user_attr("overrides", search.space.overrides(trial.params))
    for name in (PRUNED_AT, STEP_TIME, STEPS, ERROR):  # a retried trial inherits its copy's
        trial.set_user_attr(name, None)
    if pf is not None:
        for name in ("params", "gflops", "memory_gb"):
            trial.set_user_attr(name, getattr(pf, name))


def _trial_command(search: _Search, trial: Any) -> list[str]:
    run_dir = _run_dir(search, trial)
    name = search.study.study_name
    return [
        sys.executable,
        str(search.train_py),
        *search.space.fixed,
        *search.space.overrides(trial.params),
        f"hydra.run.dir={run_dir}",
        "hydra.mode=RUN",
        "++callbacks.search._target_=segkit.sweeps.pruning.OptunaReport",
        f"++callbacks.search.study='{name}'",
        f"++callbacks.search.trial={trial.number}",
        f"++callbacks.search.monitor={search.metric}",
        *trial_overrides(search.loggers, name, trial.number),
    ]


def _run_trial(search: _Search, trial: Any) -> None:
    from optuna.trial import TrialState

    run_dir = _run_dir(search, trial)
    run_dir.mkdir(parents=True, exist_ok=True)
    shown = " ".join(search.space.overrides(trial.params))
    print(f"trial {trial.number} started: {shown} (run directory {run_dir})", flush=True)
    env = {**os.environ, STORAGE_ENV: search.url}
    with (run_dir / "trial.log").open("w") as log:
        proc = subprocess.Popen(
            _trial_command(search, trial),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_death_signal(),
        )
        search.procs.add(proc)
        while True:
            search.storage.record_heartbeat(trial._trial_id)
            try:
                code = proc.wait(timeout=search.settings.heartbeat)
                break
            except subprocess.TimeoutExpired:
                continue
        search.procs.discard(proc)
    frozen = search.storage.get_trial(trial._trial_id)
    if frozen.state != TrialState.RUNNING:  # another worker gave it up for dead meanwhile
        print(f"trial {trial.number}: already {frozen.state.name.lower()}", flush=True)
        return
    metrics = _read_metrics(run_dir)
    for name in ("global_step", "peak_memory_mib", "wall_time_s", "dice_mean_best"):
        if name in metrics:
            trial.set_user_attr(name, metrics[name])
    values = list(frozen.intermediate_values.values())
    best = None
    if values:
        best = max(values) if search.settings.direction == "maximize" else min(values)
    steps = frozen.user_attrs.get(STEPS) or metrics.get("global_step")
    if code != 0 or metrics.get("status", "ok") != "ok" or best is None:
        reason = _failure(code, metrics, run_dir / "trial.log", best)
        trial.set_user_attr(ERROR, reason)
        search.study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number} failed: {reason}", flush=True)
        with search.lock:
            search.failures_in_row += 1
            if search.failures_in_row >= _MAX_FAILURES_IN_ROW + search.settings.workers:
                # a mistake every trial makes (a bad override, a missing package) ends the
                # command instead of launching failing trials for ever
                search.stop = f"{search.failures_in_row} trials in a row failed; the last: {reason}"
        if search.settings.retry:
            failed = search.storage.get_trial(trial._trial_id)
            search.storage.heartbeat_stale_trial_callback(search.study, failed)
        return
    pruned_at = frozen.user_attrs.get(PRUNED_AT)
    if pruned_at is not None:
        search.study.tell(trial, state=TrialState.PRUNED)
        search.failures_in_row = 0
        print(f"trial {trial.number} pruned at epoch {pruned_at}: best {search.metric} "
              f"{best:.4f} after {steps} steps", flush=True)  # fmt: skip
        return
    search.study.tell(trial, best)
    search.failures_in_row = 0
    print(f"trial {trial.number} complete: best {search.metric} {best:.4f} after {steps} steps",
          flush=True)  # fmt: skip


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _failure(code: int, metrics: Mapping[str, Any], log: Path, best: float | None) -> str:
    if code < 0:
        return f"killed by signal {-code}; log: {log}"
    if code != 0:
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        errors = [ln for ln in lines if "error" in ln.lower()]
        last = (errors or [ln for ln in lines if ln.strip()] or [""])[-1].strip()
        return f"exit code {code}: {last[:300]}; log: {log}"
    if metrics.get("status", "ok") != "ok":
        return f"{metrics.get('status')}: {metrics.get('reason', '')}"
    return f"no validation value was reported; log: {log}"


def train_overrides(fixed: Sequence[str]) -> list[str]:
    """The fixed overrides of a search as ``python train.py`` takes them for one run: without
    the search preset (``hparams_search=...`` holds the space, and turns on multirun)."""
    return [o for o in fixed if _key_of(o) != "hparams_search"]


def _summary(search: _Search) -> int:
    from optuna.trial import TrialState

    finished, running, trials = _trial_sets(search)
    states = [t.state for t in trials if t.user_attrs.get(RUN_DIR)]
    counts = {s: states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                            TrialState.FAIL)}  # fmt: skip
    refused = sum(1 for t in trials if t.user_attrs.get(NOT_RUN))
    print(
        f"study {search.study.study_name!r}: {counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed, "
        f"{refused} draws not launched; report: segkit sweep-report {search.settings.out}",
        flush=True,
    )
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    if complete:
        best = search.study.best_trial
        words = [*train_overrides(search.space.fixed), *search.space.overrides(best.params)]
        print(f"best: trial {best.number}, {search.metric} {best.value:.4f}: "
              f"python train.py {' '.join(shlex.quote(w) for w in words)}")  # fmt: skip
    return 0 if len(finished) >= search.settings.trials else 1
