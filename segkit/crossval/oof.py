"""``segkit cv``: train the folds, predict each fold's validation cases, score them.

A CV directory holds:

- ``folds/``: the multirun (one job per fold, ``fold_K/checkpoints/best.ckpt``), when
  ``segkit cv`` trained it (``from=MULTIRUN_DIR`` reads one made by ``train.py -m``);
- ``oof/``: the out-of-fold predictions, ``{case}.nii.gz`` on each case's original grid
  and ``{case}.npz`` with its class probabilities, each case predicted by the one fold
  that did not train on it, with that fold's best checkpoint (``segkit predict``'s path);
- ``summary.json``: ``segkit evaluate``'s summary of ``oof/`` (per case, per class and, on
  a region dataset, per region; means) plus a ``crossval`` entry: every fold's status,
  checkpoint and cases, which folds are missing or failed (their cases count as failures,
  as evaluate counts them), the labels and regions scored.

The same ``segkit cv`` again with the same ``out=`` finishes an interrupted CV (killed, or
stopped by a full disk): it trains only the folds without a finished job, each going on from
its ``last.ckpt`` (``resume=true``), and predicts only the out-of-fold cases not yet written
by their fold's checkpoint (``segkit predict``'s record; they collect in ``.oof-partial/``
until every fold is done, then replace ``oof/``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segkit.crossval.folds import (
    FoldSet,
    check_overrides,
    folds_to_train,
    launch_folds,
    read_folds,
)
from segkit.errors import ConfigError, DataError, DiskFullError
from segkit.fsio import disk_full, is_disk_full, save_json_atomic
from segkit.inference.predict.decision import relative_to

SUMMARY = "summary.json"
OOF = "oof"
STAGE = ".oof-partial"
FORMAT = "segkit-cv/1"
RERUN = "run the same command again with the same out=: it goes on where it stopped"


def default_out(overrides: Sequence[str]) -> Path:
    """``<paths.log_dir>/<task_name>/cv/<date_time>`` of the composed config."""
    from segkit.config import compose

    cfg = compose(overrides)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return Path(cfg.paths.log_dir) / str(cfg.task_name) / "cv" / stamp


def run_cv(
    overrides: Sequence[str] = (),
    *,
    folds: int | None = None,
    out: str | Path | None = None,
    tta: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Trains every fold through the configured launcher, then `summarise` (see module).
    Where ``out`` holds this configuration's folds already, only the unfinished ones are
    trained, each resumed from its last checkpoint.

    Raises:
        ConfigError: ``data.fold`` among the overrides, or ``out`` holds another
            configuration's folds.
        DiskFullError: a file could not be written for want of space.
    """
    num_folds = check_overrides(overrides, folds)
    out = Path(out) if out is not None else default_out(overrides)
    sweep = out / "folds"
    try:
        todo = folds_to_train(overrides, num_folds=num_folds, sweep_dir=sweep)
        if todo:
            resume = len(todo) < num_folds or sweep.is_dir()
            if resume:
                print(f"segkit cv: {out} holds this CV; training fold(s) {todo}, resumed")
            code = launch_folds(
                overrides, num_folds=num_folds, sweep_dir=sweep.resolve(), folds=todo,
                resume=resume,
            )  # fmt: skip
            if code:
                print(f"segkit cv: the multirun exited with status {code}; summarising the rest")
        return summarise(sweep, out=out, tta=tta, device=device)
    except DiskFullError as err:
        raise err.resumed_by(RERUN) from err
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise disk_full(err.filename or out, err).resumed_by(RERUN) from err


def summarise(
    multirun_dir: str | Path,
    *,
    out: str | Path | None = None,
    tta: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Out-of-fold predictions of every fold that finished, and their ``summary.json``.

    Returns:
        The summary written to ``out/summary.json`` (``out`` defaults to ``multirun_dir``).
    """
    from segkit.data.layouts import read_dataset
    from segkit.inference.metrics.evaluate import (
        DEFAULT_NSD_TOLERANCE,
        describe_missing,
        evaluate,
        summary,
        summary_rows,
    )
    from segkit.table import format_table

    folds = read_folds(multirun_dir)
    if len(folds.incomplete) == folds.num_folds:
        raise DataError(
            f"{multirun_dir}: no fold finished: "
            + "; ".join(f"fold {f.fold} {f.status}: {f.reason}" for f in folds.folds)
            + ". Fix: see each fold's log in its job directory, then train them again."
        )
    out = Path(multirun_dir if out is None else out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = read_dataset(folds.data_root)
    cases = {c.case_id: c for c in dataset.training}
    inference = _predict_folds(folds, cases, out, tta=tta, device=device)
    with tempfile.TemporaryDirectory(dir=out, prefix=".labels-") as labels:
        for case in cases.values():  # the references, named as the predictions are
            os.symlink(case.label, Path(labels) / _file_name(case.case_id, case.label))
        scores = evaluate(
            pred=out / OOF,
            labels=labels,
            num_classes=dataset.info.num_classes,
            ignore_label=dataset.info.ignore_label,
            regions=dataset.info.regions,
            region_labels=dataset.info.regions_class_order,
        )
    result = summary(scores, nsd_tolerance=DEFAULT_NSD_TOLERANCE)
    for entry in result["metric_per_case"]:
        entry["reference_file"] = str(cases[entry["case"]].label)
    result["crossval"] = _crossval_entry(folds, out, inference, tta=tta, info=dataset.info)
    save_json_atomic(out / SUMMARY, result)
    header, rows = summary_rows(scores)
    print(format_table(header, rows))
    print(describe_folds(result["crossval"]))
    if describe_missing(scores):
        print(describe_missing(scores))
    print(f"wrote {out / OOF} and {out / SUMMARY}")
    return result


def _file_name(case_id: str, like: Path) -> str:
    return case_id + (".nii.gz" if like.name.endswith(".nii.gz") else ".nii")


def _predict_folds(folds: FoldSet, cases: dict, out: Path, *, tta: bool, device: str) -> dict:
    """Predicts every ok fold's validation cases into ``.oof-partial/``, which replaces
    ``oof/`` at the end (so a crash leaves the previous one); a case already written there,
    or in ``oof/``, by its fold's checkpoint is skipped. Returns what inference ran per case."""
    from segkit.inference.predict.run import PredictOptions, predict

    options = PredictOptions(save_probabilities=True, progress=False, tta=tta, device=device)
    stage = out / STAGE
    ran: dict[str, str] = {}
    keep: set[str] = set()
    if not stage.is_dir():
        _link_tree(out / OOF, stage)
    for fold in folds.folds:
        if fold.status != "ok":
            continue
        unknown = sorted(set(fold.val_cases) - set(cases))
        if unknown:
            raise DataError(
                f"{folds.data_root}: fold {fold.fold} validates on {unknown[:3]}, which "
                "dataset.json does not list as training cases. Fix: restore the dataset "
                "the folds were trained on."
            )
        with tempfile.TemporaryDirectory(dir=out, prefix=".inputs-") as inputs:
            for case_id in fold.val_cases:
                for image in cases[case_id].images:
                    os.symlink(image, Path(inputs) / image.name)

            def report(line: str, k: int = fold.fold) -> None:
                case, _, what = line.partition(": ")
                ran[case] = f"fold {k}: {what}"
                print(f"fold {k}: {line}", flush=True)

            written = predict(
                ckpt=fold.checkpoint,
                input=inputs,
                output=stage,
                options=options,
                report=report,
            )
        names = {_file_name(c, cases[c].label) for c in fold.val_cases}
        if {p.name for p in written} != names:
            raise DataError(
                f"fold {fold.fold}: predictions {sorted(p.name for p in written)[:3]} are "
                f"not named as its cases' labels {sorted(names)[:3]}. Fix: name image "
                "files after their case ids."
            )
        keep |= names | {f"{c}.npz" for c in fold.val_cases}
    for leftover in stage.iterdir():  # another round's cases, a dead process's temporaries
        if leftover.name not in keep:
            leftover.unlink()
    _swap(stage, out / OOF)
    return ran


def _link_tree(source: Path, stage: Path) -> None:
    """``stage`` created holding hard links to ``source``'s files (their predictions are
    reused where still valid; ``source`` is left as it is)."""
    stage.mkdir()
    if not source.is_dir():
        return
    for f in source.iterdir():
        if f.is_file():
            with contextlib.suppress(OSError):  # no hard links here: predicted again
                os.link(f, stage / f.name)


def _swap(stage: Path, final: Path) -> None:
    """``stage`` renamed to ``final``; the previous ``final`` removed after."""
    old = final.with_name(f".{final.name}-old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    if old.exists():
        shutil.rmtree(old)


def _crossval_entry(folds: FoldSet, out: Path, ran: dict, *, tta: bool, info: Any) -> dict:
    def path(p: Path | None) -> str | None:
        return None if p is None else relative_to(p, out)

    return {
        "format": FORMAT,
        "multirun_dir": path(folds.multirun_dir),
        "num_folds": folds.num_folds,
        "complete": not folds.incomplete,
        "missing_or_failed": [
            {"fold": f.fold, "status": f.status, "reason": f.reason} for f in folds.incomplete
        ],
        "folds": [
            {
                "fold": f.fold,
                "status": f.status,
                "job_dir": path(f.job_dir),
                "checkpoint": path(f.checkpoint),
                "val_cases": list(f.val_cases),
                "reason": f.reason,
            }
            for f in folds.folds
        ],
        "overrides": list(folds.overrides),
        "data_root": str(folds.data_root),
        "label_names": {str(k): v for k, v in info.label_names.items()},
        "ignore_label": info.ignore_label,
        "regions": [r.to_dict() for r in info.regions],
        "oof_dir": OOF,
        "predict_options": {"mode": "auto", "overlap": None, "window_scale": None, "tta": tta},
        "inference": dict(sorted(ran.items())),
    }


def describe_folds(entry: dict) -> str:
    """One line per fold: status, checkpoint or reason."""
    lines = [f"cross-validation: {entry['num_folds']} folds"]
    for f in entry["folds"]:
        where = f["checkpoint"] if f["status"] == "ok" else f["reason"]
        lines.append(f"  fold {f['fold']}: {f['status']} ({len(f['val_cases'])} cases) {where}")
    if not entry["complete"]:
        bad = ", ".join(f"{f['fold']} ({f['status']})" for f in entry["missing_or_failed"])
        lines.append(f"  INCOMPLETE: fold(s) {bad}; their cases count as failures")
    return "\n".join(lines)


def load_cv(cv_dir: str | Path) -> dict[str, Any]:
    """A CV directory's ``summary.json`` (with its ``crossval`` entry).

    Raises:
        ConfigError: no summary.json, or one not written by ``segkit cv``.
    """
    import json

    path = Path(cv_dir) / SUMMARY
    if not path.is_file():
        raise ConfigError(
            f"{cv_dir}: no {SUMMARY}. Fix: give a directory `segkit cv` wrote, or summarise a "
            f"multirun of folds first: segkit cv from=MULTIRUN_DIR out={cv_dir}"
        )
    data = json.loads(path.read_text())
    if (data.get("crossval") or {}).get("format") != FORMAT:
        raise ConfigError(
            f"{path}: not a cross-validation summary (no crossval entry; e.g. a plain "
            "`segkit evaluate` summary). Fix: run `segkit cv from=MULTIRUN_DIR` on the folds."
        )
    return data
