"""Real (tiny) multiruns through train.py: grid, infeasible combination."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from segkit.sweeps.report import collect, write_report


def _metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def test_grid_depth_by_kernel_sweep_and_report(tmp_path, train_multirun):
    sweep = tmp_path / "grid"
    train_multirun(sweep, ["model.depth=2,3", "model.kernel_size=3,5"])

    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        m = _metrics(job)
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        seen.add((cfg["model"]["depth"], cfg["model"]["kernel_size"]))
        assert m["status"] == "ok"
        assert 0.0 <= m["dice_mean_best"] <= 1.0
        assert m["patch_size"] == [24, 24, 16]
        assert m["global_step"] == 2
    assert seen == {(2, 3), (2, 5), (3, 3), (3, 5)}

    paths = write_report(sweep)
    assert {p.name for p in paths.values()} == {"summary.csv", "summary.md", "summary.png"}
    assert not list(sweep.glob(".*.tmp"))
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 4
    assert [r["status"] for r in rows] == ["ok"] * 4
    values = [float(r["dice_mean_best"]) for r in rows]
    assert values == sorted(values, reverse=True)
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    # the swept keys are columns; the params agree with each job's own metrics.json
    for r in rows:
        m = _metrics(sweep / r["job"])
        assert r["model.depth"] == str(_depth(sweep / r["job"]))
        assert int(r["params"]) == m["params"]
        assert float(r["dice_mean_best"]) == pytest.approx(m["dice_mean_best"])
    # a larger kernel at the same depth has more parameters and a larger receptive field
    by = {(r["model.depth"], r["model.kernel_size"]): r for r in rows}
    assert int(by["2", "5"]["params"]) > int(by["2", "3"]["params"])
    assert by["2", "3"]["receptive field"] == "15×15×15"
    md = paths["md"].read_text()
    assert md.count("| ok |") == 4 and "summary.png" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _depth(job_dir: Path) -> int:
    return yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())["model"]["depth"]


def test_infeasible_combination_is_skipped_and_sweep_continues(tmp_path, train_multirun):
    sweep = tmp_path / "infeasible"
    # depth 9 cannot fit a 24×24×16 patch; it runs first and the sweep still trains depth 2
    train_multirun(sweep, ["model.depth=9,2"])

    skipped, trained = _metrics(sweep / "0"), _metrics(sweep / "1")
    assert skipped["status"] == "skipped"
    assert "stage 5, axis 2" in skipped["reason"] and "model.depth=5" in skipped["reason"]
    assert trained["status"] == "ok" and 0.0 <= trained["dice_mean_best"] <= 1.0

    jobs = collect(sweep)
    assert [(j.job, j.status) for j in jobs] == [("1", "ok"), ("0", "skipped")]
    assert jobs[1].metric is None and "Fix:" in jobs[1].reason
    write_report(sweep)
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [(r["model.depth"], r["status"]) for r in rows] == [("2", "ok"), ("9", "skipped")]
    assert "stage 5, axis 2" in rows[1]["reason"]


def _skipped_job_value(tmp_path: Path, monkeypatch) -> float | None:
    """What run.main returns to the sweeper for a job recorded as skipped."""
    from omegaconf import OmegaConf

    from segkit.errors import ShapeError
    from segkit.training import run

    def infeasible(cfg):
        raise ShapeError("probe")

    monkeypatch.setattr(run, "train", infeasible)
    monkeypatch.setattr(run, "_is_multirun", lambda: True)
    return run.main(OmegaConf.create({"paths": {"output_dir": str(tmp_path / "probe")}}))


def test_skipped_job_returns_none_to_the_sweeper(tmp_path, monkeypatch):
    # a skipped (infeasible) job is recorded in metrics.json and returns None, not nan
    assert _skipped_job_value(tmp_path, monkeypatch) is None
    record = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert record == {"status": "skipped", "reason": "probe"}
