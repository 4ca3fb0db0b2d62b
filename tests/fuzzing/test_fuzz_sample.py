"""Issue 25's fuzzing, the default suite's share: a seeded sample of corrupted inputs of every
kind a command reads without training (tests/fuzzing/corrupt.py), and every input that once
ended in a traceback, run through ``segkit.cli.main`` in this process. Each must exit 0 (the
input was in fact valid) or 2 with one ``segkit COMMAND: error:`` line naming the file or key,
print no traceback and leave every input file as it was. ``benchmarks/fuzz.py --n 2000``
runs thousands, training ones included, with a time and memory limit per case.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.fuzzing.corrupt import REGRESSIONS, Assets, Case, case_arrays, generate, save_nifti
from tests.fuzzing.invariant import run_case

SEED = 25
SAMPLE = generate(100, SEED, train=False)
# the regressions that need no training run (the others are the benchmark's)
FIXED = [c for c in REGRESSIONS if c.command != "train.py"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    from tests.inference.conftest import make_checkpoint

    return Assets(make_checkpoint(tmp_path_factory.mktemp("fuzz") / "base.ckpt", epochs=1))


def _id(case: Case, i: int) -> str:
    return f"{i}-{case.kind}-{case.command}"


@pytest.mark.parametrize("case", SAMPLE, ids=[_id(c, i) for i, c in enumerate(SAMPLE)])
def test_corrupted_input_is_refused_in_one_line(case, assets, tmp_path):
    outcome = run_case(case, tmp_path / "case", assets)
    assert outcome.violations() == [], outcome.report()


@pytest.mark.parametrize("case", FIXED, ids=[_id(c, i) for i, c in enumerate(FIXED)])
def test_input_that_once_gave_a_traceback(case, assets, tmp_path):
    outcome = run_case(case, tmp_path / "case", assets)
    assert outcome.violations() == [], outcome.report()
    assert outcome.rc == 2 or case.kind == "cache"  # refused; a damaged cache is recomputed


def test_the_sample_covers_every_kind_read_without_training():
    assert {c.kind for c in SAMPLE} == {
        "dataset.json", "nifti", "cache", "checkpoint", "decision.json", "plans", "cli"
    }  # fmt: skip
    assert {c.command for c in SAMPLE} >= {"configure", "plan", "predict", "evaluate", "export"}
    assert "train.py" not in {c.command for c in SAMPLE}
    again = generate(100, SEED, train=False)
    assert [c.label for c in again] == [c.label for c in SAMPLE]  # seeded


# The check itself, broken on purpose: each violation it must see, seen.


def _plans_nested(folder: Path, assets: Assets) -> list[str]:
    path = folder / "nnUNetPlans.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    return ["segkit", "configure", f"plans={path}", "configuration=3d_fullres"]


def test_the_check_sees_a_traceback(assets, tmp_path, monkeypatch):
    import segkit.planner.nnunet_plans as plans

    case = Case("plans", "configure", "nested 100000 deep", _plans_nested, ("nnUNetPlans.json",))
    assert run_case(case, tmp_path / "fixed", assets).violations() == []
    # the reader as it was: Python's RecursionError escapes json.loads
    monkeypatch.setattr(plans, "read_json", lambda path: json.loads(Path(path).read_text()))
    found = run_case(case, tmp_path / "broken", assets).violations()
    assert found[0].startswith("uncaught exception: RecursionError"), found


def _summary_over_a_label(folder: Path, assets: Assets) -> list[str]:
    for name in ("pred", "labels"):
        save_nifti(folder / name / "c0.nii.gz", case_arrays(0)[1])
    return ["segkit", "evaluate", f"pred={folder / 'pred'}", f"labels={folder / 'labels'}",
            f"summary={folder / 'labels' / 'c0.nii.gz'}"]  # fmt: skip


def test_the_check_sees_a_changed_file(assets, tmp_path):
    case = Case("cli", "evaluate", "summary= a reference", _summary_over_a_label, ("summary",))
    found = run_case(case, tmp_path / "case", assets).violations()
    assert found == ["user files changed: ['labels/c0.nii.gz (changed)']"]


def _refuse_as_before(prog: str, exc: Exception) -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)  # the message as is, newlines and all
    return 2


def test_the_check_sees_a_refusal_over_several_lines(assets, tmp_path, monkeypatch):
    import segkit.cli

    case = next(c for c in FIXED if "all-zero sform" in c.description)
    monkeypatch.setattr(segkit.cli, "refuse", _refuse_as_before)  # the affine over four lines
    found = run_case(case, tmp_path / "case", assets).violations()
    assert found and found[0].startswith("not one error line"), found
