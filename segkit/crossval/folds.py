"""The folds of a cross-validation: launching them as one multirun, and reading them back.

``segkit cv`` trains the folds as ``train.py -m data.fold=0,..,K-1`` through whatever
Hydra launcher the overrides select (``launcher=local`` one after another, ``joblib``
in parallel, ``submitit_local`` as processes, ``slurm`` as a SLURM job array), all into
one sweep directory. Reading a multirun back needs no launcher: every job directory holds
``.hydra/overrides.yaml`` and, when the job finished, ``metrics.json`` (what
``segkit sweep-report`` reads too).

Each fold's validation cases come from the data module's ``splits.json``, found by
composing the job's own overrides (the split the job trained with), and are checked
against the cases the job reported it validated on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segkit.errors import ConfigError, DataError, DiskFullError

FOLD_KEY = "data.fold"
NUM_FOLDS_KEY = "data.num_folds"
# how a job was started, not what it trains: a resumed fold is the same configuration
RESUME_KEY = "resume"


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _normal(overrides: Sequence[str]) -> list[str]:
    """Overrides as Hydra records a multirun job's (``x=false`` → ``x=False``), sorted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:  # compared as given
        return sorted(overrides)
    return sorted(f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in parsed)


@dataclass(frozen=True)
class Fold:
    """One fold of a cross-validation.

    Attributes:
        fold: its index.
        status: ``ok`` (trained, best.ckpt written), ``failed`` (crashed, killed, skipped
            as infeasible, or no checkpoint) or ``missing`` (no job for it).
        val_cases: the fold's validation cases (from the split).
        job_dir: the job's directory (None when missing).
        checkpoint: its ``checkpoints/best.ckpt`` (None unless ok).
        reason: why a fold failed or is missing.
    """

    fold: int
    status: str
    val_cases: tuple[str, ...] = ()
    job_dir: Path | None = None
    checkpoint: Path | None = None
    reason: str = ""


@dataclass(frozen=True)
class FoldSet:
    """Every fold of one configuration's cross-validation.

    Attributes:
        multirun_dir: the sweep directory.
        num_folds: ``data.num_folds`` of its jobs.
        folds: one entry per fold index, ``0..num_folds-1``.
        overrides: the jobs' common overrides (without ``data.fold``).
        data_root: the dataset the folds trained on.
        ignore_label: the dataset's ignore label (None without one).
    """

    multirun_dir: Path
    num_folds: int
    folds: tuple[Fold, ...]
    overrides: tuple[str, ...] = ()
    data_root: Path | None = None
    ignore_label: int | None = None

    @property
    def incomplete(self) -> list[Fold]:
        return [f for f in self.folds if f.status != "ok"]


def check_overrides(overrides: Sequence[str], folds: int | None) -> int:
    """The number of folds: ``folds`` or ``data.num_folds=`` among the overrides (default 5).

    Raises:
        ConfigError: ``data.fold`` given (segkit cv sets it), or two different counts.
    """
    given = {o.partition("=")[0].lstrip("+~"): o.partition("=")[2] for o in overrides}
    if FOLD_KEY in given:
        raise ConfigError(
            f"segkit cv: {FOLD_KEY}={given[FOLD_KEY]} given, but cv trains every fold itself. "
            "Fix: remove it (folds=K sets how many)."
        )
    if NUM_FOLDS_KEY in given:
        try:
            count = int(given[NUM_FOLDS_KEY])
        except ValueError:
            raise ConfigError(f"{NUM_FOLDS_KEY}={given[NUM_FOLDS_KEY]}: not an integer") from None
        if folds is not None and folds != count:
            raise ConfigError(
                f"segkit cv: folds={folds} and {NUM_FOLDS_KEY}={count} disagree. Fix: give one."
            )
        folds = count
    folds = 5 if folds is None else int(folds)
    if folds < 2:
        raise ConfigError(f"folds={folds}: a cross-validation needs at least 2 folds.")
    return folds


def fold_overrides(overrides: Sequence[str], num_folds: int) -> list[str]:
    """The overrides every fold's job is given, besides its ``data.fold``."""
    given = [o for o in overrides if _key(o) != NUM_FOLDS_KEY]
    return [*given, f"{NUM_FOLDS_KEY}={num_folds}"]


def folds_to_train(overrides: Sequence[str], *, num_folds: int, sweep_dir: Path) -> list[int]:
    """The folds ``sweep_dir`` does not hold finished (every fold where it holds no job).

    Raises:
        ConfigError: ``sweep_dir`` holds the folds of another configuration.
    """
    from segkit.sweeps.report import collect

    if not any(Path(sweep_dir).rglob(".hydra/overrides.yaml")):
        return list(range(num_folds))
    expected = _normal([o for o in fold_overrides(overrides, num_folds) if _key(o) != RESUME_KEY])
    todo = set(range(num_folds))
    for job in collect(sweep_dir):
        found = _normal([o for o in job.overrides if _key(o) not in (FOLD_KEY, RESUME_KEY)])
        if job.overrides and found != expected:  # none: Hydra was killed writing them
            raise ConfigError(
                f"{sweep_dir}: holds the folds of another configuration ({job.job}: "
                f"{' '.join(found)}; given: {' '.join(expected)}). Fix: choose another out=, "
                f"or summarise those folds again with `segkit cv from={sweep_dir}`."
            )
        fold = next((o.partition("=")[2] for o in job.overrides if _key(o) == FOLD_KEY), None)
        finished = (Path(sweep_dir) / job.job / "checkpoints" / "best.ckpt").is_file()
        if job.status == "ok" and finished and fold is not None and fold.isdigit():
            todo.discard(int(fold))
    return sorted(todo)


def launch_folds(
    overrides: Sequence[str],
    *,
    num_folds: int,
    sweep_dir: Path,
    folds: Sequence[int] | None = None,
    resume: bool = False,
) -> int:
    """Runs ``train.py -m data.fold=0,..,K-1`` (the configured launcher) into ``sweep_dir``.

    Args:
        folds: the folds to train (None: every fold).
        resume: each fold goes on from its ``checkpoints/last.ckpt`` where there is one.

    Returns:
        The multirun's exit status (non-zero when a job failed; the others still ran).

    Raises:
        DiskFullError: a job stopped the multirun for want of space (its one line, which
            the job printed, is not passed on: this error says it, with cv's fix).
    """
    from segkit.config import conf_dir

    folds = range(num_folds) if folds is None else folds
    cmd = [
        sys.executable, "-m", "segkit.crossval.launch", "-m",
        f"--config-path={conf_dir()}", "--config-name=train",
        *fold_overrides(overrides, num_folds),
        f"{FOLD_KEY}={','.join(str(k) for k in folds)}",
        *([f"{RESUME_KEY}=true"] if resume else []),
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=fold_${data.fold}",
    ]  # fmt: skip
    print("segkit cv: " + " ".join(cmd[2:]), flush=True)
    full = None
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        for line in proc.stderr:  # passed on as it comes, but a full disk's refusal
            if (match := _DISK_FULL.match(line)) is not None:
                full = DiskFullError(match["path"], match["reason"])
                continue
            sys.stderr.write(line)
            sys.stderr.flush()
    if full is not None and proc.returncode == 2:
        raise full
    return proc.returncode


# train.py's refusal of a write that found no room (segkit.errors.DiskFullError)
_DISK_FULL = re.compile(
    r"^train\.py: error: (?P<path>.+?): cannot be written: .*?\((?P<reason>\[Errno \d+\][^)]*)\)"
)


def _job_config(job_dir: Path) -> dict[str, Any]:
    path = job_dir / ".hydra" / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _int(value: Any, what: str, where: Path) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} is {value!r}, not an integer.") from None


def read_folds(multirun_dir: str | Path) -> FoldSet:
    """The folds of a multirun over ``data.fold`` (ok, failed or missing), with their cases.

    Raises:
        ConfigError: not a multirun, or its jobs differ in more than ``data.fold`` or in
            ``data.num_folds`` (not one configuration's CV).
        DataError: a job's split no longer matches the cases it validated on.
    """
    from segkit.sweeps.report import collect

    root = Path(multirun_dir)
    jobs = collect(root)
    by_fold: dict[int, list] = {}
    counts, others = set(), set()
    for job in jobs:
        job_dir = root / job.job
        cfg = _job_config(job_dir)
        data = cfg.get("data") or {}
        where = job_dir / ".hydra" / "config.yaml"
        fold = _int(data.get("fold"), FOLD_KEY, where)
        counts.add(_int(data.get("num_folds"), NUM_FOLDS_KEY, where))
        others.add(tuple(o for o in job.overrides if _key(o) not in (FOLD_KEY, RESUME_KEY)))
        by_fold.setdefault(fold, []).append((job, job_dir))
    if len(counts) > 1 or len(others) > 1:
        why = (
            f"{NUM_FOLDS_KEY} differs ({sorted(counts)})"
            if len(counts) > 1
            else f"their overrides differ beyond {FOLD_KEY}: {sorted(others)[:2]}"
        )
        raise ConfigError(
            f"{root}: not the folds of one configuration: {why}. Fix: give the multirun of "
            f"one `python train.py -m {FOLD_KEY}=0,1,2,3,4 ...` (one configuration per CV)."
        )
    num_folds = counts.pop()
    overrides = others.pop()
    splits, info = _splits(overrides, num_folds, by_fold)
    folds = []
    for k in range(num_folds):
        val = tuple(splits[k]["val"])
        entries = by_fold.get(k, [])
        if not entries:
            folds.append(Fold(k, "missing", val, reason="no job trained this fold"))
            continue
        ok = [(j, d) for j, d in entries if j.status == "ok"]
        job, job_dir = (ok or entries)[0]
        ckpt = job_dir / "checkpoints" / "best.ckpt"
        if job.status != "ok":
            folds.append(Fold(k, "failed", val, job_dir, reason=f"{job.status}: {job.reason}"))
        elif not ckpt.is_file():
            folds.append(Fold(k, "failed", val, job_dir, reason=f"finished without {ckpt}"))
        else:
            reported = [str(c) for c in job.metrics.get("validation_cases") or ()]
            if list(val[: len(reported)]) != reported:
                raise DataError(
                    f"{job_dir}/metrics.json: fold {k} validated on {reported[:3]}..., but the "
                    f"split now gives {list(val[:3])}...: splits.json changed since training. "
                    "Fix: restore the split the folds were trained with."
                )
            folds.append(Fold(k, "ok", val, job_dir, ckpt))
    return FoldSet(
        multirun_dir=root,
        num_folds=num_folds,
        folds=tuple(folds),
        overrides=overrides,
        data_root=info["root"],
        ignore_label=info["ignore_label"],
    )


def _splits(overrides: Sequence[str], num_folds: int, by_fold: dict) -> tuple[list, dict]:
    """The split the jobs trained with: the data module of their config, prepared."""
    from hydra.utils import instantiate

    from segkit.config import compose
    from segkit.planner import apply_planner

    fold = min(by_fold)
    cfg = compose([*overrides, f"{FOLD_KEY}={fold}"], hydra_config=True)
    cfg = apply_planner(cfg, [*overrides, f"{FOLD_KEY}={fold}"], record=False)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("validate")
    splits = json.loads((dm.cache_path / "splits.json").read_text())
    if len(splits) != num_folds:
        raise DataError(
            f"{dm.cache_path / 'splits.json'}: holds {len(splits)} folds, the jobs trained "
            f"{num_folds}. Fix: restore the split the folds were trained with."
        )
    info = dm.dataset_info()
    return splits, {"root": Path(dm.root).resolve(), "ignore_label": info.ignore_label}
