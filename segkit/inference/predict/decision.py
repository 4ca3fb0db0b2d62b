"""What ``ckpt=`` names: checkpoints, run folders, folds, or a ``segkit select`` decision.

`resolve_checkpoints` turns every form into checkpoint files. The decision file
``segkit select`` writes is read here too.

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
import json
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segkit.errors import ConfigError

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
        return dataclasses.replace(opts, **changes)

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
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
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
