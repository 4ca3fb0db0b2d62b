"""The model a user picks is the model that runs: presets, the demo data group, headers."""

from __future__ import annotations

import pytest

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
