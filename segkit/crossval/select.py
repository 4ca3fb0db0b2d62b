"""``segkit select``: the best configuration (or ensemble) and post-processing from CVs.

As nnU-Net's ``find_best_configuration``: every configuration's CV mean foreground Dice
(its out-of-fold predictions, as ``segkit evaluate`` scores them) and every ensemble's
(the configurations' out-of-fold probabilities averaged, then turned into labels by their
output head); the best is selected (a tie goes to fewer configurations). On it,
post-processing is tried in order, ``largest_foreground`` then ``largest_per_class``
(:mod:`segkit.inference.predict.postprocess`), each kept only where it raises the CV mean Dice.

Dice is validation's and evaluate's (`segkit.inference.metrics.dice`): per class the mean over
cases, then over classes. The decision (configurations → fold checkpoints,
post-processing, inference settings, and every number behind it) goes to one
``decision.json`` (:mod:`segkit.inference.predict.decision`) that ``segkit predict ckpt=DIR``
uses as its default.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.crossval.oof import describe_folds, load_cv
from segkit.errors import ConfigError
from segkit.fsio import save_json_atomic
from segkit.inference.predict.decision import DECISION_FILE, FORMAT, relative_to
from segkit.inference.predict.postprocess import STEPS, apply_postprocessing
from segkit.table import format_table


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


def _num_values(config: Configuration) -> int:
    head = config.models[0].head
    top = max(head.region_order) if head.is_regions else 0
    return max(len(config.models[0].label_names), top + 1)


def _dice(seg: np.ndarray, ref: np.ndarray, k: int, ignore: int | None) -> np.ndarray:
    from segkit.inference.metrics.dice import case_dice

    return case_dice(torch.from_numpy(seg), torch.from_numpy(ref), k, ignore_label=ignore).numpy()


def _mean(rows: Sequence[np.ndarray]) -> tuple[list[float | None], float]:
    from segkit.inference.metrics.dice import mean_dice

    per_class, mean = mean_dice(torch.from_numpy(np.stack(rows)))
    return [None if np.isnan(v) else float(v) for v in per_class.tolist()], mean


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
    k = _num_values(configs[0])
    ignore = configs[0].crossval.get("ignore_label")
    cases = sorted(e["case"] for e in configs[0].summary["metric_per_case"])
    candidates = _candidates(len(configs))
    rows: dict[tuple[int, ...], list[np.ndarray]] = {m: [] for m in candidates}
    for case in cases:
        data = _Case(case, configs)
        for m in candidates:
            rows[m].append(_dice(data.seg(m, head), data.ref, k, ignore))
    scored = []
    best = candidates[0]
    for m in candidates:
        per_class, mean = _mean(rows[m])
        scored.append({"configurations": [configs[i].name for i in m], "cv_dice": mean,
                       "cv_dice_per_class": per_class})  # fmt: skip
        if mean > _mean(rows[best])[1] + 1e-12:
            best = m
    post = _postprocessing(best, cases, configs, head, k, ignore)
    decision = _decision(configs, best, scored, post, out, allow_incomplete)
    out.mkdir(parents=True, exist_ok=True)
    save_json_atomic(out / DECISION_FILE, decision)
    print(describe_decision(decision))
    print(f"wrote {out / DECISION_FILE} (segkit predict ckpt={out} input=... output=...)")
    return decision


def _postprocessing(best, cases, configs, head, k, ignore) -> dict[str, Any]:
    """Each step tried after the ones kept before it; kept where it raises the mean."""
    # every ordered subset of the steps: what is kept decides which one the next step follows
    chains = [c for n in range(len(STEPS) + 1) for c in itertools.combinations(STEPS, n)]
    rows: dict[tuple[str, ...], list[np.ndarray]] = {c: [] for c in chains}
    for case in cases:
        data = _Case(case, [configs[i] for i in best])
        seg = data.seg(range(len(best)), head)
        for chain in chains:
            rows[chain].append(_dice(apply_postprocessing(seg, chain), data.ref, k, ignore))
    kept: tuple[str, ...] = ()
    trials = []
    for step in STEPS:
        before, after = _mean(rows[kept]), _mean(rows[(*kept, step)])
        keep = after[1] > before[1]
        trials.append(
            {
                "step": step,
                "after": list(kept),
                "cv_dice_without": before[1],
                "cv_dice_with": after[1],
                "per_class_without": before[0],
                "per_class_with": after[0],
                "kept": keep,
            }
        )
        if keep:
            kept = (*kept, step)
    final = _mean(rows[kept])
    return {"steps": list(kept), "trials": trials, "cv_dice": final[1], "per_class": final[0]}


def _decision(configs, best, scored, post, out: Path, allow_incomplete: bool) -> dict[str, Any]:
    from segkit.inference.predict.run import PredictOptions

    options = configs[0].crossval["predict_options"]
    predict_opts = PredictOptions(mode=options["mode"], tta=options["tta"], progress=False)
    entries = []
    for c in configs:
        inference = []
        for path, model in zip(c.checkpoints, c.models):
            settings, source = predict_opts.settings(model)
            inference.append(
                {
                    "checkpoint": relative_to(path, out),
                    "mode": settings.mode,
                    "overlap": settings.overlap,
                    "window_scale": settings.window_scale,
                    "tta": settings.tta,
                    "source": source,
                }
            )
        entries.append(
            {
                "name": c.name,
                "cv_dir": relative_to(c.cv_dir, out),
                "folds": list(c.folds),
                "checkpoints": [relative_to(p, out) for p in c.checkpoints],
                "missing_or_failed": c.crossval["missing_or_failed"],
                "cv_dice": next(s["cv_dice"] for s in scored if s["configurations"] == [c.name]),
                "inference": inference,
            }
        )
    chosen = next(s for s in scored if s["configurations"] == [configs[i].name for i in best])
    return {
        "format": FORMAT,
        "selected": {
            "configurations": chosen["configurations"],
            "cv_dice_before_postprocessing": chosen["cv_dice"],
            "cv_dice": post["cv_dice"],
            "cv_dice_per_class": post["per_class"],
        },
        "postprocessing": {"steps": post["steps"], "trials": post["trials"]},
        "inference": {**options, "per_checkpoint": "configurations[].inference"},
        "configurations": entries,
        "candidates": scored,
        "label_names": configs[0].crossval["label_names"],
        "num_cases": len(configs[0].summary["metric_per_case"]),
        "allow_incomplete": allow_incomplete,
        "dice": "mean foreground Dice: per class the mean over out-of-fold cases, then over "
        "classes (segkit evaluate's and validation's); ensembles average the configurations' "
        "out-of-fold probabilities",
    }


def _fmt(value: float | None) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.4f}"


def describe_decision(decision: dict[str, Any]) -> str:
    """Every decision with the CV numbers behind it."""
    names = list(decision["label_names"].values())[1:]
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
