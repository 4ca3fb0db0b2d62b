"""``segkit sweep-report MULTIRUN_DIR``: one table and one picture for a whole sweep.

Every job directory of a Hydra multirun holds ``.hydra/overrides.yaml`` and
``.hydra/config.yaml`` (written before the job starts) and, when the job got that
far, ``metrics.json`` (``status: ok`` or ``status: skipped`` with a reason). A job
with a log but no ``metrics.json`` crashed or was killed: it is reported as failed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segkit.errors import ConfigError
from segkit.fsio import atomic_path, write_text_atomic

METRIC = "dice_mean_best"
_STATUS_ORDER = {"ok": 0, "skipped": 1, "failed": 2, "not started": 3}
# metrics.json keys shown as columns: (key, header, format)
_COLUMNS = (
    ("params", "params", "{:,}"),
    ("gflops_per_patch", "GFLOPs/patch", "{:,.2f}"),
    ("receptive_field", "receptive field", None),
    ("estimated_activation_mib", "est. act. MiB", "{:,.0f}"),
    ("peak_memory_mib", "peak MiB", "{:,.0f}"),
    ("wall_time_s", "time s", "{:,.0f}"),
)


@dataclass(frozen=True)
class JobResult:
    """One job of a multirun.

    Attributes:
        job: The job directory relative to the multirun directory (Hydra's job number).
        status: ``ok``, ``skipped`` (infeasible, reason given), ``failed`` (a log but no
            metrics.json) or ``not started``.
        metric: The reported metric, None when the job has none.
        overrides: The job's command-line overrides.
        model: ``depth`` and ``kernel_size`` from the job's composed config.
        metrics: ``metrics.json`` without the per-epoch history.
        reason: Why a job was skipped or failed.
    """

    job: str
    status: str
    metric: float | None
    overrides: tuple[str, ...]
    model: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _read_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else None


def _failure_reason(job_dir: Path) -> str | None:
    logs = sorted(job_dir.glob("*.log"))
    if not logs:
        return None
    lines = [ln.strip() for log in logs for ln in log.read_text(errors="replace").splitlines()]
    errors = [ln for ln in lines if re.search(r"error|exception|killed|out of memory", ln, re.I)]
    last = errors[-1] if errors else next((ln for ln in reversed(lines) if ln), "")
    where = logs[-1].name
    return (
        f"no metrics.json (crashed or killed); last {'error' if errors else 'line'} "
        f"in {where}: {last[:300]}"
        if last
        else f"no metrics.json and {where} is empty"
    )


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def collect(multirun_dir: str | Path, *, metric: str = METRIC) -> list[JobResult]:
    """Every job of a multirun, best metric first, then skipped, failed, not started.

    Raises:
        ConfigError: The directory holds no Hydra job directories.
    """
    root = Path(multirun_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory (give a multirun's hydra.sweep.dir)")
    job_dirs = sorted(
        {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")} - {root},
        key=lambda p: _natural_key(str(p.relative_to(root))),
    )
    if not job_dirs:
        raise ConfigError(
            f"{root}: no job directories (none with .hydra/overrides.yaml); give the "
            "hydra.sweep.dir of a `python train.py -m ...` run"
        )
    jobs = []
    for d in job_dirs:
        overrides = tuple(str(o) for o in _read_yaml(d / ".hydra" / "overrides.yaml") or ())
        config = _read_yaml(d / ".hydra" / "config.yaml") or {}
        model = {k: (config.get("model") or {}).get(k) for k in ("depth", "kernel_size")}
        metrics_path = d / "metrics.json"
        if metrics_path.is_file():
            metrics = json.loads(metrics_path.read_text())
            metrics.pop("val_history", None)
            status = metrics.get("status", "ok")
            reason = str(metrics.get("reason", ""))
        else:
            metrics = {}
            reason = _failure_reason(d)
            status = "not started" if reason is None else "failed"
            reason = reason or "no metrics.json and no log (not started yet, or still queued)"
        value = _as_float(metrics.get(metric)) if status == "ok" else None
        jobs.append(
            JobResult(
                job=str(d.relative_to(root)),
                status=status,
                metric=value,
                overrides=overrides,
                model=model,
                metrics=metrics,
                reason=reason,
            )
        )

    def order(j: JobResult) -> tuple:
        return (
            _STATUS_ORDER.get(j.status, 9),
            j.metric is None,
            -(j.metric or 0.0),
            _natural_key(j.job),
        )

    return sorted(jobs, key=order)


def swept_keys(jobs: Sequence[JobResult]) -> list[str]:
    """Override keys whose value differs between jobs (the sweep's axes), in first-seen order."""
    values: dict[str, set[str]] = {}
    for j in jobs:
        for o in j.overrides:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    return [
        k for k, v in values.items() if len(v) > 1 or any(k not in _override_dict(j) for j in jobs)
    ]


def _override_dict(job: JobResult) -> dict[str, str]:
    return dict(o.partition("=")[::2] for o in job.overrides)


def _cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "×".join(map(str, value))
    return fmt.format(value) if fmt else str(value)


def _rows(
    jobs: Sequence[JobResult], metric: str, *, raw: bool = False
) -> tuple[list[str], list[list[str]]]:
    keys = swept_keys(jobs)
    header = ["rank", "job", "status", metric, *keys, *(h for _, h, _ in _COLUMNS), "reason"]
    rows = []
    rank = 0
    for j in jobs:
        rank += j.metric is not None
        ov = _override_dict(j)
        rows.append(
            [
                str(rank) if j.metric is not None else "",
                j.job,
                j.status,
                "" if j.metric is None else (repr(j.metric) if raw else f"{j.metric:.4f}"),
                *(ov.get(k, "") for k in keys),
                *(_cell(j.metrics.get(k), None if raw else f) for k, _, f in _COLUMNS),
                j.reason,
            ]
        )
    return header, rows


def _csv_text(jobs: Sequence[JobResult], metric: str) -> str:
    header, rows = _rows(jobs, metric, raw=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*header, "overrides"])
    for row, j in zip(rows, jobs):
        writer.writerow([*row, " ".join(j.overrides)])
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(jobs: Sequence[JobResult], *, metric: str = METRIC, title: str = "") -> str:
    """The summary as a Markdown document (table sorted by the metric)."""
    header, rows = _rows(jobs, metric)
    counts = {s: sum(j.status == s for j in jobs) for s in _STATUS_ORDER}
    lines = [
        f"# Sweep summary{': ' + title if title else ''}",
        "",
        f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        "",
    ]
    best = next((j for j in jobs if j.metric is not None), None)
    if best is not None:
        swept = set(swept_keys(jobs))
        shown = " ".join(o for o in best.overrides if o.partition("=")[0] in swept)
        lines += [f"Best {metric}: **{best.metric:.4f}** (job {best.job}: `{shown}`)", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    lines += ["", "![metric vs depth, kernel size and parameters](summary.png)", ""]
    return "\n".join(lines)


def plot(jobs: Sequence[JobResult], path: Path, *, metric: str = METRIC) -> None:
    """``metric`` vs depth (one line per kernel size) and vs parameter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [j for j in jobs if j.metric is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=90)
    by_kernel: dict[str, list[JobResult]] = {}
    for j in done:
        by_kernel.setdefault(_cell(j.model.get("kernel_size"), None), []).append(j)
    for kernel, group in sorted(by_kernel.items(), key=lambda kv: _natural_key(kv[0])):
        group = sorted(group, key=lambda j: j.model.get("depth") or 0)
        (line,) = ax1.plot(
            [j.model.get("depth") for j in group],
            [j.metric for j in group],
            "o-",
            label=f"kernel {kernel}",
        )
        # same colour per kernel size in both panels; each point labelled with its depth
        sized = [j for j in group if j.metrics.get("params")]
        ax2.scatter(
            [j.metrics["params"] for j in sized],
            [j.metric for j in sized],
            color=line.get_color(),
            label=f"kernel {kernel}",
        )
        for j in sized:
            ax2.annotate(
                f"d{j.model.get('depth')}",
                (j.metrics["params"], j.metric),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    skipped = [j for j in jobs if j.status in ("skipped", "failed")]
    if skipped:
        ax1.scatter(
            [j.model.get("depth") for j in skipped],
            [0.0] * len(skipped),
            marker="x",
            color="grey",
            label="skipped / failed",
        )
    ax1.set(xlabel="depth (resolution stages)", ylabel=metric, title=f"{metric} vs depth")
    depths = sorted({j.model.get("depth") for j in jobs if isinstance(j.model.get("depth"), int)})
    if depths:
        ax1.set_xticks(depths)
    if by_kernel or skipped:
        ax1.legend(fontsize=8)
    if any(j.metrics.get("params") for j in done):
        ax2.set_xscale("log")
    ax2.set(xlabel="parameters", ylabel=metric, title=f"{metric} vs parameters")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(multirun_dir: str | Path, *, metric: str = METRIC) -> dict[str, Path]:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` into the multirun directory.

    Each file is written to a temporary name and renamed, so a reader never sees
    a half-written summary (e.g. while a sweep still runs).

    Returns:
        The written paths by kind (``csv``, ``md``, ``png``).
    """
    root = Path(multirun_dir)
    jobs = collect(root, metric=metric)
    paths = {"csv": root / "summary.csv", "md": root / "summary.md", "png": root / "summary.png"}
    csv_text = _csv_text(jobs, metric)
    md_text = markdown(jobs, metric=metric, title=str(root))
    write_text_atomic(paths["csv"], csv_text)
    write_text_atomic(paths["md"], md_text)
    plot(jobs, paths["png"], metric=metric)
    return paths
