"""``segkit configure``, ``planner=auto`` at train start-up, and ``segkit plan -m`` with it."""

from __future__ import annotations

import functools
import json
import re
import shlex

import pytest

from segkit.cli import main
from segkit.config import check_data_choice, compose
from segkit.errors import ConfigError
from tests.planner.conftest import DATA

CASES = [((26, 30, 22), (1.0, 1.0, 1.0), None)] * 2 + [((28, 30, 20), (1.0, 1.0, 1.0), None)] * 3


def test_configure_json_has_the_planned_keys(make_dataset, capsys):
    root = make_dataset(CASES)
    assert main(["configure", "--json", "data=msd", f"data.root={root}", "model=unet"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "data.target_spacing",
        "data.patch_size",
        "data.batch_size",
        "model.depth",
        "model.strides",
        "model.kernel_size",
        "model.channels",
        "estimated_memory_gb",
    ):
        assert key in out, key
    assert out["data.patch_size"] == [28, 30, 20]  # the whole median case
    assert out["data.target_spacing"] == [1.0, 1.0, 1.0]
    assert len(out["model.strides"]) == out["model.depth"] == len(out["model.kernel_size"])
    assert 0 < out["estimated_memory_gb"] <= 8
    assert out["axis_order"] == "RAS"


def test_configure_prints_decisions_fragment_and_plan(make_dataset, capsys):
    root = make_dataset(CASES)
    assert main(["configure", "data=msd", f"data.root={root}", "planner.memory_gb=2"]) == 0
    out = capsys.readouterr().out
    assert "decisions:" in out and "the whole median case" in out
    assert "config fragment:" in out and "patch_size: [28,30,20]" in out
    assert "min input size" in out  # the plan table


def test_configure_imports_nnunet_plans(capsys):
    plans = DATA / "Dataset005_Prostate" / "nnUNetPlans.json"
    assert main(["configure", "--json", f"plans={plans}", "configuration=3d_fullres"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data.patch_size"] == [256, 320, 20] and out["data.batch_size"] == 2
    assert out["model.depth"] == 7


def test_configure_reads_an_nnunet_fingerprint(capsys):
    fp = DATA / "Dataset005_Prostate" / "dataset_fingerprint.json"
    assert main(["configure", "--json", f"fingerprint={fp}", "model=unet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data.target_spacing"] == [0.62, 0.62, 3.6]
    assert out["model.kernel_size"][0] == [3, 3, 1]
    assert out["estimated_memory_gb"] <= 8


def test_budget_too_small_is_one_clear_line(make_dataset, capsys):
    root = make_dataset(CASES)
    assert (
        main(
            ["configure", "data=msd", f"data.root={root}", "model=unet", "planner.memory_gb=0.001"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "too small" in err and "Fix: planner.memory_gb=" in err and "Traceback" not in err


def test_plan_multirun_works_with_planner_auto(make_dataset, capsys):
    root = make_dataset(CASES)
    args = ["plan", "-m", "planner=auto", "data=msd", f"data.root={root}", "model.depth=2,3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("feasible") == 2 and "infeasible" not in out


@pytest.mark.filterwarnings("ignore")
def test_train_plans_at_start_up_and_records_the_resolved_values(make_dataset, tmp_path):
    from segkit.training.run import train

    root = make_dataset(CASES)
    out_dir = tmp_path / "run"
    overrides = [
        "planner=auto",
        "data=msd",
        f"data.root={root}",
        "data.batch_size=2",  # explicit: the planner keeps it
        "model.channels=4",
        "model.max_channels=16",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
        "data.num_workers=0",
        "data.samples_per_epoch=4",
        "print_plan=false",
        f"paths.output_dir={out_dir}",
    ]
    cfg = compose(overrides, hydra_config=True)
    _, metrics = train(cfg)
    planned = json.loads((out_dir / "planner.json").read_text())
    assert planned["data.patch_size"] == [28, 30, 20] == metrics["patch_size"]
    assert planned["data.batch_size"] == 2 and "data.batch_size" in planned["explicit_overrides"]
    assert list(cfg.data.patch_size) == [28, 30, 20]
    assert "decisions" in planned and (out_dir / "planner.txt").is_file()


def test_start_up_reads_the_cached_answer_without_planning_again(make_dataset, monkeypatch):
    # what makes a second start-up take well under a second: neither the images (the
    # fingerprint) nor the network (the plan) are looked at again; the time itself is
    # reported in the README, not asserted here, where a loaded CI machine would make it flaky
    import segkit.data.fingerprint as fingerprint
    import segkit.planner.startup as planner

    root = make_dataset(CASES)
    overrides = ["planner=auto", "data=msd", f"data.root={root}", "model=unet"]
    first = planner.apply_planner(compose(overrides), overrides, record=False)

    def no_planning(*args, **kwargs):
        raise AssertionError("planned again instead of reading the cached answer")

    monkeypatch.setattr(planner, "plan_from_config", no_planning)
    monkeypatch.setattr(fingerprint, "compute_dataset_fingerprint", no_planning)
    again = planner.apply_planner(compose(overrides), overrides, record=False)
    assert again.data.patch_size == first.data.patch_size == [28, 30, 20]

    assert again.model.strides == first.model.strides
    # another budget is another answer
    other = [*overrides, "planner.memory_gb=0.001"]
    with pytest.raises(AssertionError, match="planned again"):
        planner.apply_planner(compose(other), other, record=False)


def _pasted_overrides(out: str) -> list[str]:
    """The words of the line ``segkit configure`` prints under "as overrides:"."""
    return shlex.split(out.split("as overrides:\n", 1)[1].splitlines()[0])


def test_configure_implies_data_msd_and_prints_it(make_dataset, capsys):
    """configure plans one's own data without data=msd on its command line, and the overrides
    it prints begin with data=msd: without it a training config is refused (data=demo)."""
    root = make_dataset(CASES)
    assert main(["configure", f"data.root={root}", "planner.memory_gb=2"]) == 0
    pasted = _pasted_overrides(capsys.readouterr().out)
    assert pasted[0] == "data=msd" and "data.patch_size=[28,30,20]" in pasted  # the median case
    cfg = compose([f"data.root={root}", *pasted], hydra_config=True)
    assert cfg.hydra.runtime.choices.data == "msd" and cfg.hydra.runtime.choices.model == "unet"
    check_data_choice(cfg)
    with pytest.raises(ConfigError, match="data=demo"):
        check_data_choice(compose([f"data.root={root}", *pasted[1:]]))
    # a data group given on the command line is kept, and then not printed
    assert main(["configure", "data=msd", f"data.root={root}", "planner.memory_gb=2"]) == 0
    assert "data=msd" not in _pasted_overrides(capsys.readouterr().out)


def test_configure_without_a_dataset_names_fixes_that_work_when_pasted(make_dataset, capsys):
    """Each alternative the refusal names, its placeholder path replaced by a real one."""
    prostate = DATA / "Dataset005_Prostate"
    real = {
        "/path/to/dataset": make_dataset(CASES),
        "/path/to/dataset_fingerprint.json": prostate / "dataset_fingerprint.json",
        "/path/to/nnUNetPlans.json": prostate / "nnUNetPlans.json",
    }
    assert main(["configure"]) == 2
    err = capsys.readouterr().err
    fixes = re.findall(r"(\S+)=(/path/to/[\w.]+)", err.partition("Fix:")[2])
    assert sorted(path for _, path in fixes) == sorted(real)
    for key, path in fixes:
        assert main(["configure", "--json", f"{key}={real[path]}"]) == 0, (key, path)
        assert json.loads(capsys.readouterr().out)["data.patch_size"]


@pytest.mark.parametrize("exists", [False, True], ids=["no_folder", "no_dataset_json"])
def test_configure_on_a_folder_without_a_dataset_names_a_working_fix(
    tmp_path, capsys, monkeypatch, exists
):
    import segkit.data.demo as demo

    full = demo.make_demo

    @functools.wraps(full)
    def small(*args, **kwargs):  # the real demo writer, with 2 cases to stay fast
        return full(*args, **{**kwargs, "num_cases": 2})

    monkeypatch.setattr(demo, "make_demo", small)
    root = tmp_path / "mine"
    if exists:
        root.mkdir()
    assert main(["configure", f"data.root={root}"]) == 2
    err = capsys.readouterr().err
    assert "Fix: set data.root=/path/to/dataset" in err
    command = shlex.split(re.search(r"`(segkit make-demo [^`]+)`", err).group(1))
    assert main(command[1:]) == 0
    assert main(["configure", "--json", f"data.root={root}"]) == 0


def test_configure_with_data_demo_on_another_root_names_a_working_fix(make_dataset, capsys):
    root = make_dataset(CASES)
    assert main(["configure", "data=demo", f"data.root={root}"]) == 2
    fix = re.search(r"`(data=msd [^`]+)`", capsys.readouterr().err).group(1)
    assert main(["configure", "--json", "data=demo", f"data.root={root}", *shlex.split(fix)]) == 0
