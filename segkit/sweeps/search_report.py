"""``segkit sweep-report DIR`` on a ``segkit search`` directory: every trial read back from the
study's storage (Optuna's API) and its run directory, the combinations never launched with
their reason, and the Pareto front of Dice against parameters and against step time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segkit.errors import ConfigError
from segkit.fsio import atomic_path, write_text_atomic
from segkit.sweeps.pruning import PRUNED_AT, STEP_TIME, STEPS
from segkit.sweeps.search import (
    ERROR,
    NOT_RUN,
    PREFLIGHT_FILE,
    RUN_DIR,
    SEARCH_FILE,
    train_overrides,
)
from segkit.sweeps.study import open_storage, require_optuna

_ORDER = {"complete": 0, "pruned": 1, "running": 2, "failed": 3, "never launched": 4}


@dataclass(frozen=True)
class TrialRow:
    """One trial of a search, or one combination that was never launched.

    Attributes:
        trial: The trial number (None: never launched).
        state: ``complete``, ``pruned``, ``running``, ``failed`` or ``never launched``.
        overrides: The searched keys as overrides.
        value: The best reported validation value (Dice) of the trial.
        params: Parameter count.
        gflops: GFLOPs of one patch's forward pass.
        memory_gb: The memory model's training-step peak (GB).
        peak_mib: The run's measured peak (CUDA allocator, or resident set on a CPU).
        steps: Training steps the trial used.
        pruned_at: The epoch after which it was stopped.
        step_time_s: Median measured training-step time.
        reason: Why it failed or was never launched.
        front: ``P`` on the Dice/parameters front, ``T`` on the Dice/step-time front.
    """

    trial: int | None
    state: str
    overrides: tuple[str, ...]
    value: float | None = None
    params: int | None = None
    gflops: float | None = None
    memory_gb: float | None = None
    peak_mib: float | None = None
    steps: int | None = None
    pruned_at: int | None = None
    step_time_s: float | None = None
    reason: str = ""
    front: str = ""


@dataclass(frozen=True)
class SearchReport:
    """A search's trials, best first, and what it was."""

    info: dict[str, Any]
    rows: list[TrialRow] = field(default_factory=list)
    refused: int = 0  # draws not launched (duplicates, surplus, infeasible repeats)

    @property
    def best(self) -> TrialRow | None:
        return next((r for r in self.rows if r.state == "complete"), None)


def is_search_dir(folder: str | Path) -> bool:
    return (Path(folder) / SEARCH_FILE).is_file()


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: higher value (first) at lower cost (second)."""
    front = []
    for i, (v, c) in enumerate(points):
        beaten = any(
            (w >= v and d <= c) and (w > v or d < c) for j, (w, d) in enumerate(points) if j != i
        )
        if not beaten:
            front.append(i)
    return front


def _state(trial: Any) -> str:
    name = trial.state.name.lower()
    return {"fail": "failed"}.get(name, name)


def collect_search(folder: str | Path, *, storage: str | None = None) -> SearchReport:
    """Every trial of the search in ``folder``, read through Optuna from its storage.

    Raises:
        ConfigError: ``folder`` is not a search directory, or its storage cannot be read.
    """
    root = Path(folder)
    if not is_search_dir(root):
        raise ConfigError(f"{root}: no {SEARCH_FILE} (not a segkit search directory)")
    info = json.loads((root / SEARCH_FILE).read_text())
    url = storage or info["storage"]
    if "***" in url:
        raise ConfigError(
            f"{root}/{SEARCH_FILE} keeps the storage URL without its password. Fix: "
            "storage=URL with the password"
        )
    optuna = require_optuna()
    study = optuna.load_study(study_name=info["study"], storage=open_storage(url))
    maximize = info.get("direction", "maximize") == "maximize"
    rows, refused, seen = [], 0, set()
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        overrides = tuple(a.get("overrides") or (f"{k}={v}" for k, v in t.params.items()))
        if not a.get(RUN_DIR):
            why = a.get(NOT_RUN, "")
            if why.startswith("infeasible") and overrides not in seen:
                seen.add(overrides)
                reason = why.removeprefix("infeasible: ")
                rows.append(TrialRow(None, "never launched", overrides, reason=reason))
            else:
                refused += t.state.name != "WAITING"
            continue
        values = list(t.intermediate_values.values())
        rows.append(
            TrialRow(
                trial=t.number,
                state=_state(t),
                overrides=overrides,
                value=(max if maximize else min)(values) if values else None,
                params=a.get("params"),
                gflops=a.get("gflops"),
                memory_gb=a.get("memory_gb"),
                peak_mib=a.get("peak_memory_mib"),
                steps=a.get(STEPS) or a.get("global_step"),
                pruned_at=a.get(PRUNED_AT),
                step_time_s=a.get(STEP_TIME),
                reason=a.get(ERROR) or "",
            )
        )
    pre = root / PREFLIGHT_FILE
    for r in json.loads(pre.read_text()) if pre.is_file() else []:
        overrides = tuple(r["overrides"])
        if not r["feasible"] and overrides not in seen:
            seen.add(overrides)
            rows.append(TrialRow(None, "never launched", overrides, reason=r["reason"]))
    rows = _mark_fronts(rows, maximize)
    sign = -1 if maximize else 1
    rows.sort(
        key=lambda r: (
            _ORDER[r.state],
            r.value is None,
            sign * (r.value or 0.0),
            r.trial if r.trial is not None else math.inf,
        )
    )
    return SearchReport(info=info, rows=rows, refused=refused)


def _mark_fronts(rows: list[TrialRow], maximize: bool) -> list[TrialRow]:
    from dataclasses import replace

    sign = 1 if maximize else -1
    marks: dict[int, str] = {}
    for cost, tag in (("params", "P"), ("step_time_s", "T")):
        done = [
            i
            for i, r in enumerate(rows)
            if r.state == "complete" and r.value is not None and getattr(r, cost) is not None
        ]
        points = [(sign * rows[i].value, getattr(rows[i], cost)) for i in done]
        for k in pareto(points):
            marks[done[k]] = marks.get(done[k], "") + tag
    return [replace(r, front=marks.get(i, "")) for i, r in enumerate(rows)]


def best_overrides(report: SearchReport) -> list[str]:
    """The best complete trial's overrides for ``python train.py``.

    Raises:
        ConfigError: No trial completed yet.
    """
    best = report.best
    if best is None:
        raise ConfigError("no trial has completed yet: no best trial. Fix: let the search run")
    return [*train_overrides(report.info.get("fixed", ())), *best.overrides]


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _table(report: SearchReport, *, raw: bool = False) -> tuple[list[str], list[list[str]]]:
    metric = report.info.get("metric", "val/dice_mean")
    keys = [k for k in report.info.get("keys", ())]
    header = ["trial", "state", *keys, f"best {metric}", "params", "GFLOPs", "memory GB",
              "peak MiB", "steps", "pruned at epoch", "step s", "Pareto", "reason"]  # fmt: skip
    body = []
    for r in report.rows:
        given = dict(o.partition("=")[::2] for o in r.overrides)
        body.append(
            [
                "" if r.trial is None else str(r.trial),
                r.state,
                *(given.get(k, "") for k in keys),
                _fmt(r.value, "" if raw else ".4f"),
                _fmt(r.params, "" if raw else ","),
                _fmt(r.gflops, "" if raw else ".2f"),
                _fmt(r.memory_gb, "" if raw else ".3g"),
                _fmt(r.peak_mib, "" if raw else ",.0f"),
                _fmt(r.steps, ""),
                _fmt(r.pruned_at, ""),
                _fmt(r.step_time_s, "" if raw else ".3g"),
                r.front,
                r.reason,
            ]
        )
    return header, body


def markdown(report: SearchReport, *, title: str = "") -> str:
    """The report as Markdown: counts, the best trial, the table and the picture."""
    header, body = _table(report)
    counts: dict[str, int] = {}
    for r in report.rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    steps = sum(r.steps or 0 for r in report.rows)
    info = report.info
    lines = [
        f"# Search: {info['study']}{' (' + title + ')' if title else ''}",
        "",
        f"sampler {info.get('sampler')}, pruner {info.get('pruner')}, trials {info.get('trials')}"
        f"; space: {', '.join(f'`{s}`' for s in info.get('space', ()))}",
        "",
        ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: _ORDER[kv[0]]))
        + f"; {steps:,} training steps in all"
        + (f"; {report.refused} draws not launched (repeats)" if report.refused else ""),
        "",
    ]
    best = report.best
    if best is not None:
        lines += [
            f"Best {info.get('metric')}: **{best.value:.4f}** (trial {best.trial}: "
            f"`{' '.join(best.overrides)}`)",
            "",
        ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    lines += [
        "",
        "Pareto: P = no other complete trial has a higher value with fewer parameters, "
        "T = with a shorter measured training step.",
        "",
        "![Dice against parameters and step time, Pareto fronts](search_summary.png)",
        "",
    ]
    return "\n".join(lines)


def _csv(report: SearchReport) -> str:
    header, body = _table(report, raw=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*header, "overrides"])
    for row, r in zip(body, report.rows):
        writer.writerow([*row, " ".join(r.overrides)])
    return buf.getvalue()


def plot(report: SearchReport, path: Path) -> None:
    """Best value against parameters and against step time; fronts joined, pruned in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = report.info.get("metric", "val/dice_mean")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    for ax, cost, tag, label in (
        (axes[0], "params", "P", "parameters"),
        (axes[1], "step_time_s", "T", "measured training step (s)"),
    ):
        for state, style in (("complete", dict(color="C0", marker="o")),
                             ("pruned", dict(color="grey", marker="x"))):  # fmt: skip
            pts = [r for r in report.rows
                   if r.state == state and r.value is not None and getattr(r, cost)]  # fmt: skip
            ax.scatter([getattr(r, cost) for r in pts], [r.value for r in pts], label=state,
                       **style)  # fmt: skip
            for r in pts:
                ax.annotate(str(r.trial), (getattr(r, cost), r.value), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
        front = sorted((r for r in report.rows if tag in r.front), key=lambda r: getattr(r, cost))
        if front:
            ax.step([getattr(r, cost) for r in front], [r.value for r in front], where="post",
                    color="C3", label="Pareto front")  # fmt: skip
            ax.scatter([getattr(r, cost) for r in front], [r.value for r in front], s=120,
                       facecolors="none", edgecolors="C3")  # fmt: skip
            if cost == "params":
                ax.set_xscale("log")
        ax.set(xlabel=label, ylabel=f"best {metric}", title=f"{metric} vs {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_search_report(folder: str | Path, *, storage: str | None = None) -> dict[str, Path]:
    """Write ``search_summary.csv``, ``.md`` and ``.png`` into the search directory.

    Returns:
        The written paths by kind (``csv``, ``md``, ``png``).
    """
    root = Path(folder)
    report = collect_search(root, storage=storage)
    paths = {k: root / f"search_summary.{k}" for k in ("csv", "md", "png")}
    write_text_atomic(paths["csv"], _csv(report))
    write_text_atomic(paths["md"], markdown(report, title=str(root)))
    plot(report, paths["png"])
    return paths


def shell_words(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)
