"""``segkit configure``: the planner's decisions, config fragment and plan, or nnU-Net's plan."""

from __future__ import annotations

import json
from typing import Any

from segkit.args import Arguments, Command, Key
from segkit.config import config_help
from segkit.errors import ConfigError, SegkitError

CONFIGURE_HELP = """\
Plan target spacing, patch, batch, depth, strides, kernels and channels from the dataset's
fingerprint and a memory budget (no rounding to multiples of 2^pools), and print every
decision with its reason, the config fragment and the plan table. Nothing is trained.
It plans your own dataset: data=msd is implied (name another data=... to override it).

  segkit configure data.root=/data/Task04_Hippocampus
  segkit configure data.root=/data/Task05_Prostate planner.memory_gb=24 model=unet
  segkit configure data.root=PATH model.spatial_dims=2            (2D: plans slices)
  segkit configure data.root=PATH data.patch_size=[96,96,64]      (given values win)
  segkit configure --json data.root=PATH
  segkit configure fingerprint=PATH/dataset_fingerprint.json      (nnU-Net's fingerprint)
  segkit configure plans=PATH/nnUNetPlans.json configuration=3d_fullres   (import nnU-Net)

Then train with data=msd and the same overrides (data=msd plans again at start-up from the
cached fingerprint), or paste the printed overrides, which begin with data=msd.
"""


def _chooses_data(overrides: list[str]) -> bool:
    """Whether the overrides choose the data group (``data=...``, ``+data=...``, ``~data``)."""
    return any(o.lstrip("+~").partition("=")[0].partition("@")[0] == "data" for o in overrides)


def _override_list(fragment: dict[str, Any]) -> str:
    parts = []
    for group, values in fragment.items():
        for key, value in values.items():
            text = json.dumps(value, separators=(",", ":"))
            parts.append(f"'{group}.{key}={text}'" if "[" in text else f"{group}.{key}={text}")
    return " ".join(parts)


def cmd_configure(args: Arguments) -> int:
    """Runs the planner (or the nnU-Net import) and prints what it decided."""
    from omegaconf import OmegaConf, open_dict

    from segkit.config import check_data_choice, compose
    from segkit.planner import explicit_keys, plan_from_config

    # one's own data: the default data=demo would plan the demo's small network
    implied = [] if _chooses_data(args.overrides) else ["data=msd"]
    overrides = [*implied, *args.overrides]
    cfg = compose(overrides, hydra_config=True)
    check_data_choice(cfg)
    planner = cfg.planner
    if OmegaConf.is_missing(cfg.data, "root") and not (planner.plans or planner.fingerprint):
        raise ConfigError(
            "data.root is not set: there is no dataset to plan. Fix: "
            "data.root=/path/to/dataset (a Decathlon or nnU-Net v2 raw dataset), or "
            "fingerprint=/path/to/dataset_fingerprint.json, or plans=/path/to/nnUNetPlans.json"
        )
    with open_dict(cfg):
        cfg.planner.auto = True
    result = plan_from_config(cfg, explicit_keys(overrides))
    if args.values.get("json"):
        print(json.dumps(result.to_json(), indent=1))
        return 0
    spec = result.spec
    print(
        f"segkit configure: {spec.spatial_dims}D U-Net, budget {result.budget_gb:g} GB, axes in "
        f"the preprocessed arrays' order ({result.axis_order})\n"
    )
    print("decisions:")
    for line in result.decisions:
        print(f"  - {line}")
    for line in result.warnings:
        print(f"  ! warning: {line}")
    frag = result.fragment()
    print("\nconfig fragment:")
    for group, values in frag.items():
        print(f"  {group}:")
        for key, value in values.items():
            print(f"    {key}: {json.dumps(value).replace(', ', ',')}")
    print("\nas overrides:\n  " + " ".join([*implied, _override_list(frag)]) + "\n")
    outputs = _outputs_line(cfg)
    if outputs:
        print(outputs)
    print(result.plan.table())
    return 0


def _outputs_line(cfg: Any) -> str | None:
    """The region outputs of a region dataset (None otherwise, or without a readable one)."""
    from pathlib import Path

    from omegaconf.errors import OmegaConfBaseException

    from segkit.data.layouts import read_dataset_info

    try:
        return read_dataset_info(Path(cfg.data.root)).describe_outputs()
    except (SegkitError, OmegaConfBaseException, OSError):
        return None


def _planner_defaults() -> dict[str, Any]:
    from segkit.config import compose

    planner = compose([]).planner
    return {key: planner.get(key) for key in ("plans", "configuration", "fingerprint")}


CONFIGURE = Command(
    name="configure",
    summary="plan spacing, patch, batch and network stages from the data and a memory budget",
    description=CONFIGURE_HELP,
    keys=(
        Key("json", "print one JSON object", bool, default=False),
        Key(
            "plans",
            "an nnU-Net plans file to import (short for planner.plans)",
            nullable=True,
            override="planner.plans",
        ),
        Key(
            "configuration",
            "its configuration (short for planner.configuration)",
            override="planner.configuration",
        ),
        Key(
            "fingerprint",
            "an nnU-Net dataset_fingerprint.json (short for planner.fingerprint)",
            nullable=True,
            override="planner.fingerprint",
        ),
    ),
    run=cmd_configure,
    hydra=True,
    defaults=_planner_defaults,
    epilog=config_help,
)
