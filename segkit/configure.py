"""``segkit configure``: the planner's decisions, config fragment and plan, or nnU-Net's plan."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

CONFIGURE_HELP = """\
Plan target spacing, patch, batch, depth, strides, kernels and channels from the dataset's
fingerprint and a memory budget (no rounding to multiples of 2^pools), and print every
decision with its reason, the config fragment and the plan table. Nothing is trained.

  segkit configure data.root=/data/Task04_Hippocampus
  segkit configure data.root=/data/Task05_Prostate planner.memory_gb=24 model=unet
  segkit configure data.root=PATH model.spatial_dims=2            (2D: plans slices)
  segkit configure data.root=PATH data.patch_size=[96,96,64]      (given values win)
  segkit configure --json data.root=PATH
  segkit configure fingerprint=PATH/dataset_fingerprint.json      (nnU-Net's fingerprint)
  segkit configure plans=PATH/nnUNetPlans.json configuration=3d_fullres   (import nnU-Net)

Then train with the same overrides and planner=auto (it plans again at start-up from the
cached fingerprint), or paste the printed overrides.
"""

# Short forms accepted on this command line for the planner's keys.
_ALIASES = {"plans": "planner.plans", "configuration": "planner.configuration"}
_ALIASES["fingerprint"] = "planner.fingerprint"


def _translate(overrides: Sequence[str]) -> list[str]:
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"{_ALIASES[key]}={value}" if sep and key in _ALIASES else item)
    return out


def _override_list(fragment: dict[str, Any]) -> str:
    parts = []
    for group, values in fragment.items():
        for key, value in values.items():
            text = json.dumps(value, separators=(",", ":"))
            parts.append(f"'{group}.{key}={text}'" if "[" in text else f"{group}.{key}={text}")
    return " ".join(parts)


def cmd_configure(args: argparse.Namespace) -> int:
    """Runs the planner (or the nnU-Net import) and prints what it decided."""
    from omegaconf import open_dict

    from segkit.config import compose
    from segkit.planner import explicit_keys, plan_from_config

    overrides = _translate(args.overrides)
    cfg = compose(overrides, hydra_config=True)
    with open_dict(cfg):
        cfg.planner.auto = True
    result = plan_from_config(cfg, explicit_keys(overrides))
    if args.json:
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
    print("\nas overrides:\n  " + _override_list(frag) + "\n")
    print(result.plan.table())
    return 0


def add_parser(sub: Any) -> None:
    """Adds ``configure`` to the ``segkit`` command's subparsers."""
    p = sub.add_parser(
        "configure",
        help="plan spacing, patch, batch and network stages from the data and a memory budget",
        description=CONFIGURE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides (data.root=..., planner.memory_gb=24), plans=, configuration=, "
        "fingerprint=",
    )
    p.set_defaults(func=cmd_configure)
