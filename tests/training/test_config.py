"""The model a user picks is the model that runs: presets, the demo data group, headers."""

from __future__ import annotations

import builtins
import importlib
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from segkit.cli import main
from segkit.config import check_data_choice, compose, composition
from segkit.errors import ConfigError


def test_demo_data_brings_the_small_model_and_a_short_schedule():
    cfg = compose([], hydra_config=True)
    assert (cfg.model.depth, cfg.model.channels, cfg.model.max_channels) == (4, 8, 64)
    assert cfg.trainer.max_epochs == 30 and cfg.data.samples_per_epoch == 80
    assert composition(cfg).startswith("experiment none · data demo · model demo")


@pytest.mark.parametrize(
    ("preset", "depth", "channels", "max_channels"),
    [("unet", 5, 32, 320), ("nnunet_default", 6, 32, 320), ("resunet", 5, 32, 320)],
)
def test_a_model_preset_on_the_command_line_wins_over_the_demo(
    preset, depth, channels, max_channels
):
    cfg = compose([f"model={preset}"], hydra_config=True)
    assert (cfg.model.depth, cfg.model.channels, cfg.model.max_channels) == (
        depth,
        channels,
        max_channels,
    )
    assert f"model {preset}" in composition(cfg)
    # explicit keys win over the preset, as always
    cfg = compose([f"model={preset}", "model.depth=3"])
    assert cfg.model.depth == 3 and cfg.model.channels == channels


def test_plan_of_nnunet_default_is_nnunets_network(capsys):
    assert main(["plan", "model=nnunet_default", "data.patch_size=[128,128,128]"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("experiment none · data demo · model nnunet_default")
    assert "depth 6" in out
    params = int(
        next(ln for ln in out.splitlines() if ln.startswith("params")).split()[1].replace(",", "")
    )
    assert 31.1e6 < params < 31.3e6  # nnU-Net's 3d_fullres PlainConvUNet: 31.2 M


def test_own_data_never_runs_with_demo_settings(tmp_path):
    cfg = compose(["data=msd", f"data.root={tmp_path}"], hydra_config=True)
    # planned at start-up (tests/planner/test_own_data_default.py); below: the planner=none values
    assert cfg.planner.auto and cfg.hydra.runtime.choices.planner == "auto"
    assert (cfg.model.depth, cfg.model.channels) == (5, 32)  # conf/model/unet.yaml
    assert cfg.trainer.max_epochs == 50 and cfg.data.patch_size == [128, 128, 128]
    assert cfg.task_name == "train"
    check_data_choice(cfg)  # data=msd takes any root
    demo_group = compose([f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match=f"use `data=msd data.root={tmp_path}`"):
        check_data_choice(demo_group)


def test_experiments_compose_their_own_data_and_model():
    cfg = compose(["experiment=msd_prostate"], hydra_config=True)
    assert cfg.model.depth == 6 and cfg.model.channels == 32
    assert cfg.data.patch_size == [160, 160, 20] and cfg.trainer.max_epochs == 250
    assert "experiment msd_prostate · data msd · model unet" in composition(cfg)


SENTINEL_CALLS: list[tuple] = []


def record_call(*args, **kwargs):
    """A target that must never run: it leaves a file behind, as arbitrary code could."""
    SENTINEL_CALLS.append((args, kwargs))
    if "path" in kwargs:
        Path(kwargs["path"]).write_text("called")


@pytest.mark.parametrize("preset", ["sgd_poly", "adamw_cosine"])
def test_optimizer_presets_build_that_torch_class_with_their_arguments(preset):
    from segkit.training.module import build_optimizer

    cfg = OmegaConf.to_container(compose([f"optim={preset}"]).optim.optimizer)
    module, _, name = cfg["_target_"].rpartition(".")
    expected = getattr(importlib.import_module(module), name)
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer(cfg, params)
    assert type(opt) is expected
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    assert kwargs and {k: opt.defaults[k] for k in kwargs} == kwargs
    assert opt.param_groups[0]["params"] == params


def test_optimizer_arguments_from_the_command_line_reach_the_optimizer():
    from segkit.training.module import build_optimizer

    over = ["optim=adamw_cosine", "optim.optimizer.lr=0.25", "+optim.optimizer.betas=[0.5,0.75]"]
    cfg = OmegaConf.to_container(compose(over).optim.optimizer)
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["lr"] == 0.25 and tuple(opt.defaults["betas"]) == (0.5, 0.75)


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "tests.training.test_config.record_call",
        "torch.optim.record_call",  # a name planted in torch.optim that is not an optimizer
        "torch.optim.lr_scheduler.LambdaLR",
        "torch.optim.Optimizer.__init__",
        "",
    ],
)
def test_optimizer_target_outside_the_allow_list_is_refused_and_never_called(
    target, tmp_path, monkeypatch
):
    from segkit.training.module import build_optimizer

    sentinel = tmp_path / "called"
    # every target resolves to the recorder, so anything that imported and called it shows
    monkeypatch.setattr(os, "system", record_call)
    monkeypatch.setattr(builtins, "eval", record_call)
    monkeypatch.setattr(torch.optim, "record_call", record_call, raising=False)
    SENTINEL_CALLS.clear()
    cfg = {"_target_": target, "_partial_": True, "path": str(sentinel), "lr": 0.1}
    with pytest.raises(ConfigError, match="not an optimizer segkit builds") as exc:
        build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    assert "torch.optim.{" in str(exc.value) and "AdamW" in str(exc.value)
    assert SENTINEL_CALLS == [] and not sentinel.exists()


@pytest.mark.parametrize("bar", [True, False])
def test_enable_progress_bar_false_is_accepted_by_lightnings_trainer(bar, tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks.progress import ProgressBar

    from segkit.training.run import training_callbacks

    cfg = compose(["data=demo", f"paths.output_dir={tmp_path}", "~callbacks.pictures",
                   f"+trainer.enable_progress_bar={str(bar).lower()}"])  # fmt: skip
    callbacks = training_callbacks(cfg)
    # Lightning's own Trainer is the judge: with the bar disabled it refuses a bar callback
    trainer = pl.Trainer(
        callbacks=callbacks, enable_progress_bar=bar, logger=False, accelerator="cpu",
        default_root_dir=tmp_path,
    )  # fmt: skip
    assert any(isinstance(c, ProgressBar) for c in trainer.callbacks) is bar
