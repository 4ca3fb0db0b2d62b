"""Composing segkit's Hydra configs outside ``@hydra.main`` (CLI, tests)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segkit.errors import ConfigError


def conf_dir() -> Path:
    """The ``conf/`` directory: ``$SEGKIT_CONF``, ``./conf``, or the repo's beside the package."""
    candidates = [
        os.environ.get("SEGKIT_CONF"),
        Path.cwd() / "conf",
        Path(__file__).resolve().parents[1] / "conf",
    ]
    for c in candidates:
        if c and (Path(c) / "train.yaml").is_file():
            return Path(c).resolve()
    raise ConfigError(
        "cannot find segkit's conf/ directory (looked in $SEGKIT_CONF, ./conf and beside the "
        "package); run from the repository root or set SEGKIT_CONF=/path/to/segkit/conf"
    )


def compose(
    overrides: Sequence[str] = (), *, config_name: str = "train", hydra_config: bool = False
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style overrides.

    Hydra's own errors (unknown group option, bad override syntax) become a
    :class:`ConfigError` with Hydra's message.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(
                config_name=config_name,
                overrides=list(overrides),
                return_hydra_config=hydra_config,
            )
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"config: {exc}") from None


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Cartesian product of sweep overrides (``model.depth=3,4,5``) as plain override lists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"overrides: {exc}") from None
    axes: list[list[str]] = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def model_config(
    cfg: DictConfig, *, num_channels: int | None = None, num_classes: int | None = None
) -> dict[str, Any]:
    """The ``model`` group as a plain dict with in/out channels filled from the data.

    Raises:
        ConfigError: ``model.in_channels``/``out_channels`` disagree with the dataset.
    """
    model = OmegaConf.to_container(cfg.model, resolve=True)
    for key, value, what in (
        ("in_channels", num_channels, "channels (dataset.json channel_names/modality)"),
        ("out_channels", num_classes, "classes incl. background (dataset.json labels)"),
    ):
        if model.get(key) is None:
            model[key] = value if value is not None else (1 if key == "in_channels" else 2)
        elif value is not None and model[key] != value:
            raise ConfigError(
                f"model.{key}={model[key]} but the dataset has {value} {what}; remove the "
                f"override (segkit reads it from dataset.json) or set model.{key}={value}"
            )
    return model


def group_choices(cfg: DictConfig) -> dict[str, str]:
    """The config group options in effect (``data``, ``model``, ``experiment``, ...).

    Read from the composed config's ``hydra.runtime.choices`` (``compose(...,
    hydra_config=True)``) or from Hydra's running app; empty if neither is known.
    """
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if choices is None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            choices = HydraConfig.get().runtime.choices
    if choices is None:
        return {}
    return {
        str(k): "none" if v is None else str(v)
        for k, v in choices.items()
        if not str(k).startswith("hydra/")
    }


def composition(cfg: DictConfig) -> str:
    """One line naming the presets in effect, e.g. ``experiment none · data demo · model demo``."""
    choices = group_choices(cfg)
    if not choices:
        return "presets: unknown (composed without Hydra's runtime choices)"
    parts = [f"{g} {choices.get(g) or 'none'}" for g in ("experiment", "data", "model")]
    for group in ("planner", "trainer", "optim"):
        if group in choices:
            parts.append(f"{group} {choices[group]}")
    return " · ".join(parts)


def check_data_choice(cfg: DictConfig) -> None:
    """``data=demo`` only reads the synthetic demo; anything else must say ``data=msd``.

    The demo data group also brings a small network and a short CPU schedule, so
    silently training a user's dataset with it would be wrong.

    Raises:
        ConfigError: ``data.root`` points away from the demo while ``data=demo``.
    """
    demo = OmegaConf.select(cfg, "data.make_demo_if_missing", default=None)
    if not isinstance(demo, str) or OmegaConf.is_missing(cfg.data, "root"):
        return
    root = Path(str(cfg.data.root)).expanduser().resolve()
    if root != Path(demo).expanduser().resolve():
        raise ConfigError(
            f"data.root={cfg.data.root}: data=demo is the synthetic demo dataset (generated "
            f"at {demo}) and comes with the small demo network and a short CPU schedule. Fix: "
            f"for your own dataset use `data=msd data.root={cfg.data.root}` (the nnU-Net-like "
            "model=unet, patch 128³; see the README, 'Using your own data'), or an experiment "
            "such as experiment=msd_hippocampus"
        )
