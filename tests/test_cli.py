"""The one grammar of every ``segkit`` command: --help, unknown keys, values, README forms."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nibabel as nib
import pytest
import yaml

from segkit.args import Command, Key, parse
from segkit.cli import commands, main
from segkit.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def _help_keys(text: str) -> list[str]:
    """The key names a --help text lists (its "keys" section)."""
    section = text.split("keys (key=value")[1].split("\n\n")[0]
    return re.findall(r"^  (\w+)=", section, flags=re.M)


@pytest.mark.parametrize("name", sorted(commands()))
def test_help_lists_exactly_the_keys_the_command_accepts(name, capsys):
    assert main([name, "--help"]) == 0
    text = capsys.readouterr().out
    listed = _help_keys(text)
    assert listed, text
    # every listed key is accepted by the parser ...
    command = commands()[name]
    for key in listed:
        assert command.key(key) is not None
    # ... and the unknown-key error offers the same list
    with pytest.raises(ConfigError) as err:
        parse(command, ["no_such_key=1"] if not command.hydra else ["--no-such-flag"])
    assert err.value.args[0].split("allowed keys: ")[1].split(" (")[0] == ", ".join(listed)


def test_predict_help_shows_the_defaults_predict_uses(capsys):
    from segkit.inference.predict.run import PredictOptions

    assert main(["predict", "-h"]) == 0
    rows = {
        m[1]: m[2] for m in re.finditer(r"^  (\w+)=\s+(\S+)", capsys.readouterr().out, flags=re.M)
    }
    used = PredictOptions()  # what predict runs with when a key is not given
    assert rows["sw_batch_size"] == "null" and used.sw_batch_size is None  # the engine's default
    assert rows["mode"] == used.mode and rows["device"] == used.device
    assert rows["tta"] == "null" and used.tta is None  # the model's default
    assert rows["overlap"] == "null"
    assert rows["ckpt"] == rows["input"] == rows["output"] == "(required)"


def test_plan_help_lists_config_groups_and_model_defaults(capsys):
    assert main(["plan", "--help"]) == 0
    text = capsys.readouterr().out
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and any(p.glob("*.yaml")))
    for group in groups:
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        assert re.search(rf"^  {group}\s", text, flags=re.M), group
        assert ", ".join(options) in text.replace("\n" + " " * 35, " ")
    # data=demo's model: conf/model/demo.yaml on top of the unet.yaml it lists as its default
    model = {
        **yaml.safe_load((CONF / "model" / "unet.yaml").read_text()),
        **yaml.safe_load((CONF / "model" / "demo.yaml").read_text()),
    }
    for key in ("depth", "channels", "kernel_size", "block"):
        assert re.search(rf"\smodel\.{key}={model[key]}\s", text), key
    assert "multirun= (-m)" in text and "json=" in text


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_unknown_key_names_it_and_lists_the_allowed_ones(capsys):
    err = _one_line_error(capsys, ["predict", "ckpt=a", "input=b", "output=c", "colour=red"])
    assert err.startswith("segkit predict: error: unknown key 'colour'")
    for key in ("ckpt", "input", "output", "mode", "overlap", "tta", "trust"):
        assert key in err.split("allowed keys:")[1]
    err = _one_line_error(capsys, ["evaluate", "pred=a", "--labelz", "b"])
    assert "unknown flag '--labelz'" in err and "labels" in err
    err = _one_line_error(capsys, ["make-demo", "cases=3"])
    assert "unknown key 'cases'" in err and "num_cases" in err


def test_unknown_config_key_of_plan_lists_the_groups_keys(capsys):
    err = _one_line_error(capsys, ["plan", "model.depht=3"])
    assert "unknown key 'model.depht'" in err
    unet = yaml.safe_load((CONF / "model" / "unet.yaml").read_text())
    listed = err.split("model has: ")[1].split(".")[0].split(", ")
    assert {k for k in unet if not k.startswith("_") and k != "defaults"} <= set(listed)
    err = _one_line_error(capsys, ["plan", "model=unet3"])
    assert "model=unet3: no such option" in err
    assert ", ".join(sorted(p.stem for p in (CONF / "model").glob("*.yaml"))) in err


def test_missing_required_key_and_bad_values(capsys):
    err = _one_line_error(capsys, ["predict", "ckpt=a"])
    assert "missing input=..., output=..." in err
    err = _one_line_error(capsys, ["predict", "ckpt=a", "input=b", "output=c", "overlap=abc"])
    assert "overlap: got 'abc'; expected a number" in err
    err = _one_line_error(capsys, ["evaluate", "pred=a", "labels=b", "num_classes=[1,2"])
    assert "num_classes=[1,2: not a value of Hydra's override grammar" in err


ALL_TYPES = Command(
    name="demo",
    summary="",
    description="",
    keys=(
        Key("n", "", int, nullable=True),
        Key("x", "", float),
        Key("flag", "", bool),
        Key("items", "", list),
        Key("text", "", str, nullable=True),
    ),
    run=lambda args: 0,
)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("n=3", {"n": 3}),
        ("n=-3", {"n": -3}),
        ("n='4'", {"n": 4}),  # a quoted number converts as OmegaConf converts a typed field
        ("n=null", {"n": None}),
        ("x=-0.5", {"x": -0.5}),
        ("x=1e-3", {"x": 0.001}),
        ("x=2", {"x": 2.0}),
        ("flag=true", {"flag": True}),
        ("flag=False", {"flag": False}),
        ("flag=yes", {"flag": True}),
        ("--flag", {"flag": True}),
        ("items=[1,2,3]", {"items": [1, 2, 3]}),
        ("items=[a,-1,null]", {"items": ["a", -1, None]}),
        ("items=a.B,c.D", {"items": ["a.B", "c.D"]}),
        ("items=one", {"items": ["one"]}),
        ("text='a=b'", {"text": "a=b"}),
        ('text="two words"', {"text": "two words"}),
        ("text=a=b", {"text": "a=b"}),  # only the first '=' separates key and value
        ("text=1e-3", {"text": "1e-3"}),  # a string key keeps its text, not float 0.001
        ("text=007", {"text": "007"}),
        ("text=2025-01-31_12-00-00", {"text": "2025-01-31_12-00-00"}),
        ("text=fold0/a.ckpt,fold1/b.ckpt", {"text": "fold0/a.ckpt,fold1/b.ckpt"}),
        ("text=scan (1).nii.gz", {"text": "scan (1).nii.gz"}),
        ("text=null", {"text": None}),
        ("--x=-2.5", {"x": -2.5}),
    ],
)
def test_values_follow_hydras_grammar(word, expected):
    assert parse(ALL_TYPES, [word]).values == expected


def test_flags_with_values_and_positionals_are_the_same_keys():
    from segkit.cli import MAKE_DEMO, SWEEP_REPORT

    spellings = (
        ["out/d", "--num-cases", "3", "--seed=1"],
        ["dir=out/d", "num_cases=3", "seed=1"],
        ["--dir", "out/d", "--num_cases=3", "seed=1"],
    )
    assert all(
        parse(MAKE_DEMO, s).values == {"dir": "out/d", "num_cases": 3, "seed": 1} for s in spellings
    )
    assert parse(SWEEP_REPORT, ["runs/x", "--metric", "m"]).values == {
        "dir": "runs/x",
        "metric": "m",
    }
    with pytest.raises(ConfigError, match="not key=value"):
        parse(MAKE_DEMO, ["a", "b"])  # one positional only


def test_configure_short_keys_become_planner_overrides():
    from segkit.configure import CONFIGURE

    args = parse(CONFIGURE, ["--json", "plans=/p/x.json", "configuration=2d", "data.root=/d"])
    assert args.values["json"] is True
    assert args.overrides == ["planner.plans=/p/x.json", "planner.configuration=2d", "data.root=/d"]


def test_readme_plan_invocation_gives_closed_form_sizes(capsys):
    # segkit plan model.depth=4 data.patch_size=[37,45,29]   (README, quick start)
    assert main(["plan", "--json", "model.depth=4", "data.patch_size=[37,45,29]"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["input_size"] == [37, 45, 29]
    # stride-2 "same" convs give ceil(S / 2) per level; the decoder restores each skip
    sizes = [[37, 45, 29]]
    for _ in range(3):
        sizes.append([math.ceil(s / 2) for s in sizes[-1]])
    outs = [r["out_size"] for r in plan["rows"]]
    assert sizes[-1] in outs and outs[-1] == [37, 45, 29]
    assert main(["plan", "json=true", "model.depth=4", "data.patch_size=[37,45,29]"]) == 0
    assert json.loads(capsys.readouterr().out) == plan  # --json is json=true


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from tests.inference.conftest import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("cli") / "best.ckpt", epochs=1)


def test_readme_predict_and_evaluate_invocations(tiny_ckpt, tmp_path, monkeypatch, capsys):
    from segkit.data.demo import make_demo

    monkeypatch.chdir(tmp_path)
    assert main(["make-demo", "data/demo", "--num-cases", "1"]) == 0  # the pre-grammar form
    assert len(json.loads(Path("data/demo/dataset.json").read_text())["training"]) == 1
    assert make_demo(Path("data/demo")) == Path("data/demo")  # already there: kept
    # segkit predict ckpt=.../best.ckpt input=data/demo output=preds/   (README)
    args = ["predict", f"ckpt={tiny_ckpt}", "input=data/demo", "output=preds/", "progress=false"]
    assert main(args) == 0, capsys.readouterr().err
    tests = sorted(p.name for p in Path("data/demo/imagesTs").iterdir())
    assert sorted(p.name for p in Path("preds").iterdir()) == tests
    for name in tests:
        pred = nib.load(f"preds/{name}")
        assert pred.shape == nib.load(f"data/demo/imagesTs/{name}").shape[:3]
    capsys.readouterr()
    # segkit evaluate pred=preds/ labels=data/demo/labelsTs   (README)
    assert main(["evaluate", "pred=preds/", "labels=data/demo/labelsTs"]) == 0
    out = capsys.readouterr().out
    cases = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
    assert [Path(t).name.split(".")[0] for t in tests] == cases[: len(tests)]
    assert "mean" in cases


def test_plan_names_the_problem_of_an_unreadable_dataset_json(tmp_path, capsys):
    # a dataset.json that exists but is invalid must not be reported as missing
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1"},
                "labels": {"background": 0, "whole": [1, 2], "core": [2]},
                "regions_class_order": [1],
                "numTraining": 0,
                "file_ending": ".nii.gz",
            }
        )
    )
    assert main(["plan", "data=msd", f"data.root={root}", "planner=none"]) == 0
    out = capsys.readouterr().out
    assert "no dataset.json" not in out
    assert "cannot be read" in out and "regions_class_order" in out
