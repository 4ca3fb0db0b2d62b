"""``segkit select``: the best configuration (or ensemble) and post-processing from CVs.

As nnU-Net's ``find_best_configuration``: every configuration's CV mean foreground Dice
(its out-of-fold predictions, as ``segkit evaluate`` scores them) and every ensemble's
(the configurations' out-of-fold probabilities averaged, then turned into labels by their
output head); the best is selected (a tie goes to fewer configurations). On it,
post-processing is tried in order, ``largest_foreground`` then ``largest_per_class``
(:mod:`segkit.inference.predict.postprocess`), each kept only where it raises the CV mean Dice.

Dice is validation's and evaluate's (`segkit.inference.metrics.dice`): per foreground class
(per region on a region dataset, the label maps turned into regions) the mean over cases,
then over classes. The decision (configurations → fold checkpoints, post-processing,
inference settings, and every number behind it) goes to one ``decision.json``
(:mod:`segkit.inference.predict.decision`, which defines it) that ``segkit predict ckpt=DIR``
uses as its default.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.crossval.oof import describe_folds, load_cv
from segkit.data.regions import Region
from segkit.errors import ConfigError
from segkit.inference.metrics.dice import case_dice, case_region_dice, mean_dice
from segkit.inference.predict.decision import (
    DECISION_FILE,
    ConfigurationEntry,
    Score,
    Trial,
    describe_decision,
    write_decision,
)
from segkit.inference.predict.postprocess import STEPS, apply_postprocessing


@dataclass(frozen=True)
class Configuration:
    """One CV directory: its summary, fold checkpoints and models (on the CPU)."""

    name: str
    cv_dir: Path
    summary: dict[str, Any]
    checkpoints: tuple[Path, ...]
    folds: tuple[int, ...]
    models: tuple[Any, ...]

    @property
    def crossval(self) -> dict[str, Any]:
        return self.summary["crossval"]

    @property
    def oof(self) -> Path:
        return self.cv_dir / self.crossval["oof_dir"]


def _names(cv_dirs: Sequence[Path]) -> list[str]:
    names = [p.resolve().name for p in cv_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{p.resolve().parent.name}/{p.resolve().name}" for p in cv_dirs]


def load_configurations(
    cv_dirs: Sequence[str | Path], *, allow_incomplete: bool = False
) -> list[Configuration]:
    """The CVs to choose from, checked to be complete and comparable.

    Raises:
        ConfigError: a CV with missing or failed folds (unless ``allow_incomplete``),
            configurations with other label sets, output heads, input channels or
            preprocessing, other cases, or other inference options.
    """
    from segkit.inference.predict.checkpoint import load_model
    from segkit.inference.predict.run import check_ensemble

    dirs = [Path(d) for d in cv_dirs]
    if not dirs:
        raise ConfigError("segkit select: no CV directory given. Fix: segkit select CV_DIR ...")
    configs = []
    for name, d in zip(_names(dirs), dirs):
        summary = load_cv(d)
        cv = summary["crossval"]
        bad = cv["missing_or_failed"]
        if (bad or summary.get("cases_without_prediction")) and not allow_incomplete:
            raise ConfigError(
                f"segkit select: the CV in {d} is incomplete:\n{describe_folds(cv)}\n"
                f"{len(summary.get('cases_without_prediction') or ())} case(s) have no "
                "out-of-fold prediction. Fix: train the missing folds again (into its multirun, "
                f"then `segkit cv from={cv['multirun_dir']} out={d}`), or pass "
                "allow_incomplete=true to select anyway (the cases without prediction count "
                "as failures)."
            )
        ok = [f for f in cv["folds"] if f["status"] == "ok"]
        ckpts = tuple((d / f["checkpoint"]).resolve() for f in ok)
        models = tuple(load_model(p) for p in ckpts)
        configs.append(Configuration(name, d, summary, ckpts, tuple(f["fold"] for f in ok), models))
    first = configs[0]
    for other in configs[1:]:
        try:
            check_ensemble([first.models[0], other.models[0]])
        except ConfigError as err:
            raise ConfigError(
                f"segkit select: configurations {first.name} ({first.cv_dir}) and {other.name} "
                f"({other.cv_dir}) can be neither compared nor ensembled: {err}"
            ) from None
        cases = [{e["case"] for e in c.summary["metric_per_case"]} for c in (first, other)]
        if cases[0] != cases[1]:
            raise ConfigError(
                f"segkit select: {first.name} and {other.name} were cross-validated on other "
                f"cases ({sorted(cases[0] ^ cases[1])[:5]} in only one): their scores do not "
                "compare. Fix: select among CVs of one dataset."
            )
        if other.crossval["predict_options"] != first.crossval["predict_options"]:
            raise ConfigError(
                f"segkit select: {first.name} and {other.name} predicted their folds with "
                f"other options ({first.crossval['predict_options']} vs "
                f"{other.crossval['predict_options']}). Fix: run segkit cv with the same tta=."
            )
    return configs


_Dice = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (seg, ref) → Dice per class or region


def _scoring(config: Configuration) -> tuple[list[str], _Dice]:
    """The names of the per-case scores and the function computing them: the Dice of each
    region on a region dataset (the label maps turned into regions, as validation and
    ``segkit evaluate`` score them), else of each foreground class.

    Raises:
        ConfigError: a region model whose CV summary does not record its regions.
    """
    cv = config.crossval
    regions = [Region.from_dict(r) for r in cv.get("regions") or ()]
    if config.models[0].head.is_regions and not regions:
        raise ConfigError(
            f"segkit select: {config.cv_dir / 'summary.json'} has no 'crossval.regions', "
            "though its checkpoints predict regions: it was summarised before segkit cv "
            "recorded the regions it scores. Fix: summarise the folds again: segkit cv "
            f"from=MULTIRUN_DIR out={config.cv_dir}"
        )
    k, ignore = len(cv["label_names"]), cv.get("ignore_label")

    def per_region(seg: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return np.array(case_region_dice(seg, ref, regions))

    def per_class(seg: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return case_dice(seg, ref, k, ignore_label=ignore).numpy()

    if regions:
        return [r.name for r in regions], per_region
    return [cv["label_names"][str(c)] for c in range(1, k)], per_class


def _score(rows: Sequence[np.ndarray]) -> Score:
    per_class, mean = mean_dice(torch.from_numpy(np.stack(rows)))
    return Score(mean, tuple(None if math.isnan(v) else v for v in per_class.tolist()))


class _Case:
    """One case's reference and each configuration's out-of-fold labels and probabilities."""

    def __init__(self, case: str, configs: Sequence[Configuration]) -> None:
        from segkit.data.io import read_nifti

        entry = next(e for e in configs[0].summary["metric_per_case"] if e["case"] == case)
        self.ref = np.asarray(read_nifti(Path(entry["reference_file"]), kind="label").data)
        self.ref = self.ref.astype(np.int64)
        self.labels, self.probs = [], []
        for c in configs:
            files = sorted(c.oof.glob(f"{case}.nii*"))
            seg = read_nifti(files[0], kind="label").data if files else np.zeros_like(self.ref)
            self.labels.append(np.asarray(seg).astype(np.int64))
            npz = c.oof / f"{case}.npz"
            self.probs.append(
                np.load(npz)["probabilities"].astype(np.float32) if npz.is_file() else None
            )

    def seg(self, members: Sequence[int], head: Any) -> np.ndarray:
        """The label map of one configuration (as predicted) or of an ensemble."""
        if len(members) == 1:
            return self.labels[members[0]]
        probs = [self.probs[m] for m in members if self.probs[m] is not None]
        if not probs:
            return np.zeros_like(self.ref)
        mean = torch.from_numpy(np.mean(probs, axis=0))
        return head.labels(mean, dim=0).numpy().astype(np.int64)


def _candidates(n: int) -> list[tuple[int, ...]]:
    return [m for size in range(1, n + 1) for m in itertools.combinations(range(n), size)]


def select(
    cv_dirs: Sequence[str | Path],
    *,
    out: str | Path | None = None,
    allow_incomplete: bool = False,
) -> dict[str, Any]:
    """Selects a configuration or ensemble and its post-processing; writes the decision.

    Args:
        cv_dirs: directories written by ``segkit cv`` (one per configuration).
        out: where ``decision.json`` goes (default: ``selection/`` beside the first CV).
        allow_incomplete: select even from CVs with missing or failed folds.

    Returns:
        The decision, as written to ``out/decision.json``.
    """
    configs = load_configurations(cv_dirs, allow_incomplete=allow_incomplete)
    out = Path(out) if out is not None else Path(cv_dirs[0]).resolve().parent / "selection"
    head = configs[0].models[0].head
    names, dice = _scoring(configs[0])
    cases = sorted(e["case"] for e in configs[0].summary["metric_per_case"])
    candidates = _candidates(len(configs))
    rows: dict[tuple[int, ...], list[np.ndarray]] = {m: [] for m in candidates}
    for case in cases:
        data = _Case(case, configs)
        for m in candidates:
            rows[m].append(dice(data.seg(m, head), data.ref))
    scores = {m: _score(rows[m]) for m in candidates}
    best = candidates[0]
    for m in candidates:
        if scores[m].mean > scores[best].mean + 1e-12:
            best = m
    cv = configs[0].crossval
    decision = write_decision(
        out,
        configurations=[_entry(c) for c in configs],
        scores={tuple(configs[i].name for i in m): s for m, s in scores.items()},
        selected=tuple(configs[i].name for i in best),
        trials=_postprocessing(best, cases, configs, head, dice),
        options=cv["predict_options"],
        score_names=names,
        label_names=cv["label_names"],
        num_cases=len(cases),
        allow_incomplete=allow_incomplete,
    )
    print(describe_decision(decision))
    print(f"wrote {out / DECISION_FILE} (segkit predict ckpt={out} input=... output=...)")
    return decision


def _postprocessing(best, cases, configs, head, dice) -> list[Trial]:
    """Each step tried after the ones kept before it; kept where it raises the mean."""
    # every ordered subset of the steps: what is kept decides which one the next step follows
    chains = [c for n in range(len(STEPS) + 1) for c in itertools.combinations(STEPS, n)]
    rows: dict[tuple[str, ...], list[np.ndarray]] = {c: [] for c in chains}
    for case in cases:
        data = _Case(case, [configs[i] for i in best])
        seg = data.seg(range(len(best)), head)
        for chain in chains:
            rows[chain].append(dice(apply_postprocessing(seg, chain), data.ref))
    kept: tuple[str, ...] = ()
    trials = []
    for step in STEPS:
        before, after = _score(rows[kept]), _score(rows[(*kept, step)])
        trials.append(Trial(step, kept, before, after, kept=after.mean > before.mean))
        if trials[-1].kept:
            kept = (*kept, step)
    return trials


def _entry(config: Configuration) -> ConfigurationEntry:
    """A configuration with the settings ``segkit predict`` runs each of its checkpoints with."""
    from segkit.inference.predict.run import PredictOptions

    options = config.crossval["predict_options"]
    predict_opts = PredictOptions(mode=options["mode"], tta=options["tta"], progress=False)
    return ConfigurationEntry(
        name=config.name,
        cv_dir=config.cv_dir,
        folds=config.folds,
        checkpoints=config.checkpoints,
        missing_or_failed=tuple(config.crossval["missing_or_failed"]),
        inference=tuple(predict_opts.settings(model) for model in config.models),
    )
