"""The ``segkit`` command: plan, make-demo, predict, evaluate, export, sweep-report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from segkit.errors import SegkitError
from segkit.table import format_table

PLAN_HELP = """\
Print the static plan of the network that `python train.py` would build: every
layer's kernel, stride, padding, output_padding/crop, in→out size and channels,
plus params, FLOPs, receptive field and training activation memory.

Overrides use Hydra's grammar, exactly as for train.py:
  segkit plan model.depth=6 model.kernel_size=5 data.patch_size=[197,233,189]
  segkit plan model=unet2d data.patch_size=[28,28]
  segkit plan model=anisotropic 'model.kernel_size=[[1,3,3],3,3,3,3]'
  segkit plan model=nnunet_default data.patch_size=[128,128,128]
Pre-flight of a sweep (one row per combination, nothing is trained):
  segkit plan -m model.depth=3,4,5,6 model.kernel_size=3,5,7 data.patch_size=[96,96,96]
  segkit plan -m +sweep=depth_kernel              (a preset's hydra.sweeper.params)
  segkit plan -m hparams_search=optuna            (every combination Optuna may draw)
  segkit plan -m +sweep=depth_kernel launcher=slurm   (also prints the sbatch script)

An infeasible configuration exits with code 2 and says which stage and axis fail
and how to fix it.
"""


def _plan_one(overrides: Sequence[str]):
    from pathlib import Path

    from omegaconf.errors import OmegaConfBaseException

    from segkit.config import check_data_choice, compose, composition, model_config
    from segkit.data.layouts import read_dataset_info
    from segkit.plan import plan_unet
    from segkit.planner import apply_planner
    from segkit.spec import UNetSpec

    cfg = apply_planner(compose(overrides, hydra_config=True), overrides, record=False)
    check_data_choice(cfg)
    try:
        info = read_dataset_info(Path(cfg.data.root))
        counts = (info.num_channels, info.num_classes)
    except (SegkitError, OmegaConfBaseException, OSError):
        counts = None  # no (readable) dataset yet: the plan still shows, with a note
    model = model_config(
        cfg, num_channels=counts[0] if counts else None, num_classes=counts[1] if counts else None
    )
    spec = UNetSpec.from_config(model)
    patch = list(cfg.data.patch_size)
    title = f"{composition(cfg)}\n" + _title(spec, patch)
    if counts is None and (cfg.model.in_channels is None or cfg.model.out_channels is None):
        from omegaconf import OmegaConf

        where = (
            "data.root is not set"
            if OmegaConf.is_missing(cfg.data, "root")
            else f"no dataset.json at data.root={cfg.data.root}"
        )
        title += (
            f"({where}: assuming {spec.in_channels} input channel(s) and "
            f"{spec.out_channels} classes)\n"
        )
    return spec, plan_unet(spec, patch, title=title)


def _title(spec, patch) -> str:
    return (
        f"segkit plan: {spec.spatial_dims}D U-Net, depth {spec.depth}, block {spec.block}, "
        f"{spec.downsample}/{spec.upsample}, patch {'×'.join(map(str, patch))}\n"
    )


def cmd_plan(args: argparse.Namespace) -> int:
    if not args.multirun:
        _, plan = _plan_one(args.overrides)
        print(json.dumps(plan.to_dict(), indent=1) if args.json else plan.table())
        return 0
    from segkit.config import expand_sweep
    from segkit.sweeps import preview_sbatch, sweep_overrides

    # command-line sweeps plus a preset's hydra.sweeper.params (+sweep=..., hparams_search=...)
    sweep = sweep_overrides(args.overrides)
    combos = expand_sweep(sweep.overrides)
    rows = []
    for n, combo in enumerate(combos):
        shown = " ".join(o for o in combo if o in _swept(sweep.overrides, combo))
        try:
            _, plan = _plan_one(combo)
            s = plan.summary()
            rows.append(
                (
                    str(n),
                    shown,
                    "feasible",
                    f"{plan.params:,}",
                    f"{s['gflops']:,.2f}",
                    "×".join(map(str, plan.receptive_field)),
                    f"{s['activation_mib']:,.0f}",
                    "",
                )
            )
        except SegkitError as exc:
            rows.append((str(n), shown, "infeasible", "", "", "", "", str(exc)))
    header = (
        "#",
        "overrides",
        "status",
        "params",
        "GFLOPs",
        "receptive field",
        "act. MiB/sample",
        "reason (a sweep records these jobs as skipped)",
    )
    print(format_table(header, rows))
    for entry in sweep.sampled:
        print(f"sampled by the sweeper, not enumerated: {entry}")
    if sweep.launcher == "submitit_slurm":
        size = len(combos) if sweep.batch_size is None else min(sweep.batch_size, len(combos))
        print(f"\nsbatch script of a {size}-job array (nothing is submitted):\n")
        print(preview_sbatch(sweep.fixed, num_jobs=size).script)
    return 0


def _swept(overrides: Sequence[str], combo: Sequence[str]) -> set[str]:
    from segkit.config import expand_sweep

    variable = set()
    all_combos = expand_sweep(overrides)
    for i in range(len(combo)):
        if len({c[i] for c in all_combos}) > 1:
            variable.add(combo[i])
    return variable or set(combo)


def cmd_make_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from segkit.data.demo import make_demo

    root = make_demo(Path(args.dir), num_cases=args.num_cases, seed=args.seed)
    print(f"demo dataset written to {root}")
    return 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from segkit.sweeps.report import collect, markdown, write_report

    paths = write_report(args.dir, metric=args.metric)
    print(markdown(collect(args.dir, metric=args.metric), metric=args.metric, title=args.dir))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segkit", description="U-Net segmentation of medical volumes with exact shapes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "plan",
        help="print the static plan of a configured network",
        description=PLAN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="expand sweep overrides (a=1,2 b=3,5) and plan every combination",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.depth=4")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("make-demo", help="write the synthetic demo dataset (Decathlon layout)")
    p.add_argument("dir", nargs="?", default="data/demo")
    p.add_argument("--num-cases", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_demo)

    from segkit.configure import add_parser as add_configure_parser
    from segkit.inference.cli import add_parsers as add_inference_parsers

    add_configure_parser(sub)  # configure

    add_inference_parsers(sub)  # predict, export, evaluate

    p = sub.add_parser(
        "sweep-report",
        help="summarise a multirun: summary.csv/.md/.png",
        description="Collect every job's overrides and metrics.json of a "
        "multirun (skipped and failed jobs with their reason) into summary.csv, "
        "summary.md and summary.png inside MULTIRUN_DIR.",
    )
    p.add_argument("dir", metavar="MULTIRUN_DIR", help="the sweep's hydra.sweep.dir")
    p.add_argument(
        "--metric",
        default="dice_mean_best",
        help="metrics.json key to sort and plot by (default: dice_mean_best)",
    )
    p.set_defaults(func=cmd_sweep_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SegkitError as exc:
        print(f"segkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
