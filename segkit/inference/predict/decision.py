"""What ``ckpt=`` names: checkpoints, run folders, folds, or a ``segkit select`` decision.

`resolve_checkpoints` turns every form into checkpoint files. The decision file
``segkit select`` writes is defined here, both ways: `write_decision` writes it,
`read_selection` reads it back and `describe_decision` prints it.

``decision.json`` names the selected configuration(s) (one, or an ensemble of several),
each with its fold checkpoints, the post-processing steps kept and the inference
settings; the CV numbers behind each choice are in the file too. Checkpoint paths are
stored relative to the file, so the whole tree (CV directories and selection) can move.

``segkit predict ckpt=DIR_OR_FILE`` takes the decision as its default: every checkpoint
of the selected configurations (their probabilities averaged), its post-processing and
its inference settings; an option given explicitly wins.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segkit.errors import ConfigError
from segkit.fsio import read_json, save_json_atomic
from segkit.table import format_table

DECISION_FILE = "decision.json"
FORMAT = "segkit-selection/1"
# PredictOptions fields a decision sets (its defaults for `segkit predict`)
OPTION_KEYS = ("mode", "overlap", "window_scale", "tta", "postprocess")


@dataclass(frozen=True)
class Selection:
    """A decision read back: what ``segkit predict`` runs by default.

    Attributes:
        path: the decision file.
        members: the selected configurations' names (several: an ensemble).
        checkpoints: every fold checkpoint of every member, in member order.
        options: ``PredictOptions`` values it sets (see :data:`OPTION_KEYS`).
        cv_dice: the CV mean foreground Dice of what was selected, post-processing included.
    """

    path: Path
    members: tuple[str, ...]
    checkpoints: tuple[Path, ...]
    options: dict[str, Any]
    cv_dice: float | None = None

    def fill(self, opts: Any, *, given: Collection[str] = ()) -> Any:
        """``opts`` (a ``PredictOptions``) with the decision's values wherever a field was
        not ``given`` and is at its default."""
        default = type(opts)()
        changes = {
            k: v
            for k, v in self.options.items()
            if k not in given and getattr(opts, k) == getattr(default, k)
        }
        try:
            return dataclasses.replace(opts, **changes)
        except ConfigError as err:
            raise _bad(self.path, f"its inference settings are refused: {err}") from err

    def describe(self) -> str:
        what = (
            f"ensemble of {', '.join(self.members)}"
            if len(self.members) > 1
            else f"configuration {self.members[0]}"
        )
        post = ", ".join(self.options.get("postprocess") or ()) or "none"
        score = "" if self.cv_dice is None else f" (CV mean Dice {self.cv_dice:.4f})"
        return (
            f"decision {self.path}: {what}{score}, {len(self.checkpoints)} checkpoint(s); "
            f"post-processing: {post}"
        )


def decision_path(ckpt: str | Path) -> Path | None:
    """The decision file ``ckpt`` names (the file, or a folder holding ``decision.json``),
    None when it names checkpoints."""
    path = Path(str(ckpt).strip())
    if path.is_dir() and (path / DECISION_FILE).is_file():
        return path / DECISION_FILE
    if path.suffix == ".json" and path.is_file():
        return path
    return None


def find_selection(ckpt: str | Path | Sequence[str | Path]) -> Selection | None:
    """The decision ``ckpt`` names, None for checkpoint files, lists and run folders."""
    if not isinstance(ckpt, str | Path) or (isinstance(ckpt, str) and "," in ckpt):
        return None
    path = decision_path(ckpt)
    return None if path is None else read_selection(path)


def _bad(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"ckpt={path}: not a segkit decision file ({why}). Fix: point ckpt= at the folder "
        "`segkit select` wrote (or its decision.json), or at checkpoint files."
    )


def read_selection(path: str | Path) -> Selection:
    """Reads and checks a decision file (every checkpoint it names must exist).

    Raises:
        ConfigError: not valid JSON, not a decision, or a checkpoint is missing.
    """
    path = Path(path)
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise _bad(path, f"cannot be read as JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _bad(path, f'no "format": "{FORMAT}" entry')
    try:
        members = data["selected"]["configurations"]
        by_name = {c["name"]: c for c in data["configurations"]}
        options = {k: data["inference"][k] for k in OPTION_KEYS if k != "postprocess"}
        options["postprocess"] = tuple(data["postprocessing"]["steps"])
        rel = [p for name in members for p in by_name[name]["checkpoints"]]
    except (KeyError, TypeError) as err:
        raise _bad(path, f"missing entry {err}") from err
    wrong = _wrong_types(members, rel, options, data["selected"].get("cv_dice"))
    if wrong:
        raise _bad(path, wrong)
    checkpoints = tuple((path.parent / p).resolve() for p in rel)
    absent = [str(p) for p in checkpoints if not p.is_file()]
    if absent or not checkpoints:
        raise ConfigError(
            f"ckpt={path}: the decision names checkpoint(s) that do not exist: "
            f"{absent[:3] or 'none at all'}. Fix: keep the CV directories where `segkit "
            "select` found them (paths are relative to the decision file), or run select again."
        )
    return Selection(
        path=path,
        members=tuple(members),
        checkpoints=checkpoints,
        options=options,
        cv_dice=data["selected"].get("cv_dice"),
    )


def _wrong_types(members: Any, rel: list, options: dict[str, Any], cv_dice: Any) -> str:
    """What in a decision's values has the wrong type ('' if nothing)."""

    def number(v: Any, *, null: bool = True) -> bool:
        return (v is None and null) or isinstance(v, int | float) and not isinstance(v, bool)

    checks = (
        ("selected.configurations", all(isinstance(m, str) for m in members)),
        ("configurations[].checkpoints", all(isinstance(p, str) and p for p in rel)),
        ("inference.mode", isinstance(options["mode"], str)),
        ("inference.overlap", number(options["overlap"])),
        ("inference.window_scale", number(options["window_scale"])),
        ("inference.tta", isinstance(options["tta"], bool)),
        ("postprocessing.steps", all(isinstance(p, str) for p in options["postprocess"])),
        ("selected.cv_dice", number(cv_dice)),
    )
    return ", ".join(f"{key} has the wrong type" for key, ok in checks if not ok)


@dataclass(frozen=True)
class Score:
    """A CV mean foreground Dice: the mean and, per class (or region), the mean over cases.

    Attributes:
        mean: the mean over classes of ``per_class`` (NaN entries left out).
        per_class: per foreground class or region; None where absent from every case.
    """

    mean: float
    per_class: tuple[float | None, ...]


@dataclass(frozen=True)
class Trial:
    """One post-processing step, tried on top of the steps kept before it (``after``)."""

    step: str
    after: tuple[str, ...]
    without: Score
    with_step: Score
    kept: bool


@dataclass(frozen=True)
class ConfigurationEntry:
    """One cross-validated configuration ``segkit select`` chose from, as the decision lists it.

    Attributes:
        name: its name (its CV directory's).
        cv_dir: the CV directory.
        folds: the folds with a checkpoint.
        checkpoints: one per fold in ``folds``.
        missing_or_failed: the CV's folds without a checkpoint, as ``segkit cv`` lists them.
        inference: per checkpoint, the settings ``segkit predict`` runs it with (``mode``,
            ``overlap``, ``window_scale``, ``tta`` attributes) and where they come from.
    """

    name: str
    cv_dir: Path
    folds: tuple[int, ...]
    checkpoints: tuple[Path, ...]
    missing_or_failed: tuple[dict[str, Any], ...]
    inference: tuple[tuple[Any, str], ...]


def _score(score: Score) -> dict[str, Any]:
    return {"cv_dice": score.mean, "cv_dice_per_class": list(score.per_class)}


def write_decision(
    folder: str | Path,
    *,
    configurations: Sequence[ConfigurationEntry],
    scores: dict[tuple[str, ...], Score],
    selected: tuple[str, ...],
    trials: Sequence[Trial],
    options: dict[str, Any],
    score_names: Sequence[str],
    label_names: dict[str, str],
    num_cases: int,
    allow_incomplete: bool,
) -> dict[str, Any]:
    """Writes ``folder/decision.json`` atomically (paths relative to ``folder``).

    Args:
        folder: where it goes (created).
        configurations: every configuration chosen from.
        scores: the CV score of every candidate (a configuration, or an ensemble) by the
            names of its configurations.
        selected: the candidate chosen.
        trials: the post-processing steps tried on it, in order.
        options: the CV's ``predict_options`` (``mode``, ``overlap``, ``window_scale``,
            ``tta``): what ``segkit predict`` takes from the decision.
        score_names: the name of each per-class score (the regions' on a region dataset).
        label_names: label value → name, of the CVs.
        num_cases: the out-of-fold cases scored.
        allow_incomplete: whether CVs with missing folds were allowed.

    Returns:
        The decision as written.
    """
    folder = Path(folder)
    steps = [t.step for t in trials if t.kept]
    final = scores[selected]
    if trials:  # the score of the steps kept: the last trial's with or without its step
        final = trials[-1].with_step if trials[-1].kept else trials[-1].without
    decision = {
        "format": FORMAT,
        "selected": {
            "configurations": list(selected),
            "cv_dice_before_postprocessing": scores[selected].mean,
            **_score(final),
        },
        "postprocessing": {
            "steps": steps,
            "trials": [
                {
                    "step": t.step,
                    "after": list(t.after),
                    "cv_dice_without": t.without.mean,
                    "cv_dice_with": t.with_step.mean,
                    "per_class_without": list(t.without.per_class),
                    "per_class_with": list(t.with_step.per_class),
                    "kept": t.kept,
                }
                for t in trials
            ],
        },
        "inference": {**options, "per_checkpoint": "configurations[].inference"},
        "configurations": [
            {
                "name": c.name,
                "cv_dir": relative_to(c.cv_dir, folder),
                "folds": list(c.folds),
                "checkpoints": [relative_to(p, folder) for p in c.checkpoints],
                "missing_or_failed": list(c.missing_or_failed),
                "cv_dice": scores[(c.name,)].mean,
                "inference": [
                    {
                        "checkpoint": relative_to(path, folder),
                        "mode": settings.mode,
                        "overlap": settings.overlap,
                        "window_scale": settings.window_scale,
                        "tta": settings.tta,
                        "source": source,
                    }
                    for path, (settings, source) in zip(c.checkpoints, c.inference)
                ],
            }
            for c in configurations
        ],
        "candidates": [{"configurations": list(m), **_score(s)} for m, s in scores.items()],
        "score_names": list(score_names),
        "label_names": label_names,
        "num_cases": num_cases,
        "allow_incomplete": allow_incomplete,
        "dice": "mean foreground Dice: per class (per region on a region dataset) the mean "
        "over out-of-fold cases, then over classes (segkit evaluate's and validation's); "
        "ensembles average the configurations' out-of-fold probabilities",
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_json_atomic(folder / DECISION_FILE, decision)
    return decision


def _fmt(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.4f}"


def describe_decision(decision: dict[str, Any]) -> str:
    """Every decision with the CV numbers behind it."""
    names = decision["score_names"]
    header = ["configuration(s)", "CV mean Dice", *names]
    rows = [
        [" + ".join(s["configurations"]), _fmt(s["cv_dice"]), *map(_fmt, s["cv_dice_per_class"])]
        for s in decision["candidates"]
    ]
    chosen = decision["selected"]
    lines = [
        f"CV mean foreground Dice of each configuration and ensemble ({decision['num_cases']} "
        "out-of-fold cases):",
        format_table(header, rows),
        f"selected: {' + '.join(chosen['configurations'])} "
        f"(CV mean Dice {_fmt(chosen['cv_dice_before_postprocessing'])}; the highest"
        + (", ties going to fewer configurations)" if len(rows) > 1 else ")"),
        "post-processing, each step tried after those kept:",
    ]
    for t in decision["postprocessing"]["trials"]:
        verdict = "kept (raises" if t["kept"] else "dropped (does not raise"
        lines.append(
            f"  {t['step']}: CV mean Dice {_fmt(t['cv_dice_without'])} -> "
            f"{_fmt(t['cv_dice_with'])}: {verdict} the CV mean Dice); per class "
            + ", ".join(
                f"{n} {_fmt(a)} -> {_fmt(b)}"
                for n, a, b in zip(names, t["per_class_without"], t["per_class_with"])
            )
        )
    steps = ", ".join(decision["postprocessing"]["steps"]) or "none"
    lines.append(f"post-processing: {steps}; final CV mean Dice {_fmt(chosen['cv_dice'])}")
    inf = decision["inference"]
    lines.append(f"inference: mode={inf['mode']} tta={str(inf['tta']).lower()}; per checkpoint:")
    for c in decision["configurations"]:
        if c["name"] in chosen["configurations"]:
            for i in c["inference"]:
                lines.append(
                    f"  {i['checkpoint']}: overlap {i['overlap']}, window x{i['window_scale']} "
                    f"({i['source']})"
                )
    return "\n".join(lines)


def relative_to(path: str | Path, folder: str | Path) -> str:
    """``path`` relative to ``folder`` (how a decision stores its checkpoints)."""
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve())


def resolve_checkpoints(ckpt: str | Path | Sequence[str | Path]) -> list[Path]:
    """Checkpoint files from a file, a comma-separated list, a list, a run directory, a
    multirun directory (``*/checkpoints/best.ckpt``, e.g. ``train.py -m data.fold=0,1,2,3,4``),
    a ``segkit cv`` directory (``folds/*/checkpoints/best.ckpt``) or a ``segkit select``
    decision (its folder or ``decision.json``: every checkpoint of the selected ensemble).

    Raises:
        ConfigError: nothing found, or a listed file does not exist.
    """
    if isinstance(ckpt, str | Path):
        items = [p for p in str(ckpt).split(",") if p.strip()] if isinstance(ckpt, str) else [ckpt]
    else:
        items = list(ckpt)
    found: list[Path] = []
    for item in items:
        path = Path(str(item).strip())
        decision = decision_path(path)
        if decision is not None:
            found += read_selection(decision).checkpoints
        elif path.is_dir():
            runs = (
                sorted(path.glob("checkpoints/best.ckpt"))
                or sorted(
                    path.glob("*/checkpoints/best.ckpt"),
                    key=lambda p: _natural(p.parent.parent.name),
                )
                or sorted(
                    path.glob("folds/*/checkpoints/best.ckpt"),
                    key=lambda p: _natural(p.parent.parent.name),
                )
            )
            if not runs:
                raise ConfigError(
                    f"ckpt={path}: a folder without checkpoints/best.ckpt or "
                    "*/checkpoints/best.ckpt. Fix: point ckpt= at a checkpoint file, a training "
                    "run directory or a multirun directory (e.g. of train.py -m data.fold=0,1,2)."
                )
            found += runs
        else:
            found.append(path)
    if not found:
        raise ConfigError("ckpt=: no checkpoint given. Fix: ckpt=RUN/checkpoints/best.ckpt")
    return found


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))
