"""sweep-report on a hand-made multirun directory: ok, skipped, failed and unstarted jobs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from segkit.cli import main as cli
from segkit.sweeps.report import collect, write_report


def _job(root: Path, name: str, depth: int, kernel: int, *, metrics=None, log=None) -> None:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(
        f"- debug=tiny\n- model.depth={depth}\n- model.kernel_size={kernel}\n"
    )
    (d / ".hydra" / "config.yaml").write_text(
        f"model:\n  depth: {depth}\n  kernel_size: {kernel}\n"
    )
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (d / "demo.log").write_text(log)


def _ok(dice: float, params: int) -> dict:
    return {"status": "ok", "dice_mean_best": dice, "params": params, "gflops_per_patch": 0.5,
            "receptive_field": [35, 35, 35], "estimated_activation_mib": 7.2,
            "val_history": [{"epoch": 0, "dice_mean": dice}]}  # fmt: skip


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    _job(root, "0", 3, 3, metrics=_ok(0.61, 1000))
    _job(root, "1", 3, 5, metrics=_ok(0.74, 5000))
    _job(root, "2", 9, 3, metrics={"status": "skipped", "reason": "stage 5, axis 2: too small"})
    _job(root, "3", 4, 5, log="[INFO] - training\nRuntimeError: CUDA out of memory\n")
    _job(root, "10", 4, 3, metrics=_ok(0.70, 2000))
    _job(root, "11", 5, 5)
    return root


def test_collect_orders_and_classifies(multirun):
    jobs = collect(multirun)
    assert [(j.job, j.status) for j in jobs] == [
        ("1", "ok"), ("10", "ok"), ("0", "ok"),
        ("2", "skipped"), ("3", "failed"), ("11", "not started"),
    ]  # fmt: skip
    assert [j.metric for j in jobs[:3]] == [0.74, 0.70, 0.61]
    assert jobs[3].reason == "stage 5, axis 2: too small"
    assert "CUDA out of memory" in jobs[4].reason and "demo.log" in jobs[4].reason
    assert "val_history" not in jobs[0].metrics
    assert jobs[0].model == {"depth": 3, "kernel_size": 5}


def test_report_files(multirun):
    paths = write_report(multirun)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["job"] for r in rows] == ["1", "10", "0", "2", "3", "11"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "", "", ""]
    assert rows[0]["dice_mean_best"] == "0.74" and rows[0]["params"] == "5000"
    assert rows[0]["receptive field"] == "35×35×35"
    assert (rows[3]["model.depth"], rows[3]["status"]) == ("9", "skipped")
    assert rows[4]["status"] == "failed" and "out of memory" in rows[4]["reason"]
    assert rows[0]["overrides"] == "debug=tiny model.depth=3 model.kernel_size=5"
    md = paths["md"].read_text()
    assert "6 jobs: 3 ok, 1 skipped, 1 failed, 1 not started" in md
    assert "Best dice_mean_best: **0.7400** (job 1: `model.depth=3 model.kernel_size=5`)" in md
    assert "| 1 | 1 | ok | 0.7400 | 3 | 5 | 5,000 |" in md
    assert paths["png"].stat().st_size > 10_000
    assert sorted(p.name for p in multirun.iterdir() if p.is_file()) == [
        "summary.csv", "summary.md", "summary.png",
    ]  # fmt: skip


def test_cli_sweep_report(multirun, capsys, tmp_path):
    assert cli(["sweep-report", str(multirun)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 1 | ok | 0.7400 |" in out and "summary.png" in out
    assert (multirun / "summary.png").is_file()
    assert cli(["sweep-report", str(tmp_path / "nothing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["sweep-report", str(tmp_path / "empty")]) == 2
    assert "no job directories" in capsys.readouterr().err
