"""The ``segkit`` command: plan, configure, search, cv, select, predict, evaluate, export,
make-demo, sweep-report.

Every subcommand reads its arguments in one grammar, Hydra-style ``key=value``
(:mod:`segkit.args`), and prints its keys with ``segkit COMMAND --help``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from omegaconf.errors import InterpolationResolutionError

from segkit.args import Arguments, Command, Key, help_text, parse, signature_defaults
from segkit.config import config_help
from segkit.errors import DataError, SegkitError, interpolation_error, refuse
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
  segkit plan -m hparams_search=optuna            (every combination a search may draw)
  segkit plan -m +sweep=depth_kernel launcher=slurm   (also prints the sbatch script)

An infeasible configuration exits with code 2 and says which stage and axis fail
and how to fix it.
"""


def cmd_plan(args: Arguments) -> int:
    """``segkit plan``: the plan table (or JSON), or with -m one row per sweep combination."""
    from segkit.sweeps.preflight import plan_one

    if not args.values.get("multirun"):
        _, plan = plan_one(args.overrides)
        print(json.dumps(plan.to_dict(), indent=1) if args.values.get("json") else plan.table())
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
            _, plan = plan_one(combo)
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


SEARCH_HELP = """\
An Optuna (>= 4) study whose trials are train.py runs: each trial reports its validation
Dice per epoch and is stopped early when the pruner says it falls behind. Sweeps use
Hydra's sweeper grammar (a,b,c  choice()  range()  interval()  tag(log, interval())):
  segkit search model.depth=3,4,5 model.kernel_size=3,5 trials=6 out=outputs/search1
  segkit search hparams_search=optuna trials=30 workers=2 out=outputs/search2
  segkit search model.depth=3,4,5 'model.channels=choice(8,16,32)' sampler=grid out=...
Every combination is planned first; one that cannot be built for the patch or needs more
than planner.memory_gb is never launched. The same command again (another shell, another
machine with storage=postgresql://...) joins the study; a killed worker's trial is marked
failed (retry=N queues it again) and re-running completes the trials. Trials live in
OUT/trials/N (normal train.py run directories); `segkit sweep-report OUT` reports them.
With launcher=slurm (or submitit_local) the workers are submitted jobs, one worker each,
set up by conf/launcher/ (storage= then a URL every node reaches, e.g. PostgreSQL):
  segkit search hparams_search=optuna workers=8 launcher=slurm out=/scratch/$USER/search1 \\
      hydra.launcher.partition=gpu storage=postgresql://USER:PASSWORD@HOST/DB
"""


def cmd_search(args: Arguments) -> int:
    """``segkit search``: run or join an Optuna study of train.py trials."""
    from segkit.sweeps.search import run_search

    return run_search(args.overrides, args.values)


def _search_defaults() -> dict:
    from dataclasses import fields

    from segkit.sweeps.search import SearchSettings

    return {f.name: f.default for f in fields(SearchSettings) if f.name != "out"}


def cmd_make_demo(args: Arguments) -> int:
    """``segkit make-demo [DIR]``: the synthetic demo dataset."""
    from pathlib import Path

    from segkit.data.demo import make_demo

    given = dict(args.values)
    if "dir" in given:
        given["root"] = Path(given.pop("dir"))
    try:
        root = make_demo(**given)
    except OSError as err:
        raise DataError(
            f"{given.get('root', 'dir')}: the demo cannot be written there ({err}). Fix: "
            "choose another directory, e.g. segkit make-demo data/demo"
        ) from err
    print(f"demo dataset written to {root}")
    return 0


def _make_demo_defaults() -> dict:
    from segkit.data.demo import make_demo

    return signature_defaults(make_demo, dir="root")


def cmd_sweep_report(args: Arguments) -> int:
    """``segkit sweep-report DIR``: summary.csv/.md/.png of a multirun."""
    from segkit.sweeps.report import METRIC, collect, markdown, write_report
    from segkit.sweeps.search_report import is_search_dir

    if is_search_dir(args.values["dir"]):
        return _search_report(args)
    if args.values.get("best") or args.values.get("storage"):
        raise SegkitError(f"{args.values['dir']}: best= and storage= need a segkit search dir")
    folder, metric = args.values["dir"], args.values.get("metric", METRIC)
    paths = write_report(folder, metric=metric)
    print(markdown(collect(folder, metric=metric), metric=metric, title=folder))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _search_report(args: Arguments) -> int:
    from segkit.sweeps import search_report as sr

    folder, storage = args.values["dir"], args.values.get("storage")
    if args.values.get("best"):
        print(sr.shell_words(sr.best_overrides(sr.collect_search(folder, storage=storage))))
        return 0
    paths = sr.write_search_report(folder, storage=storage)
    print(sr.markdown(sr.collect_search(folder, storage=storage), title=folder))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _sweep_report_defaults() -> dict:
    from segkit.sweeps.report import write_report

    return signature_defaults(write_report)


PLAN = Command(
    name="plan",
    summary="print the static plan of a configured network",
    description=PLAN_HELP,
    keys=(
        Key(
            "multirun",
            "expand sweep overrides (a=1,2 b=3,5) and plan every combination",
            bool,
            alias="-m",
            default=False,
        ),
        Key("json", "print the plan as JSON", bool, default=False),
    ),
    run=cmd_plan,
    hydra=True,
    epilog=config_help,
)

SEARCH = Command(
    name="search",
    summary="an Optuna architecture search of train.py runs, pruned early",
    description=SEARCH_HELP,
    keys=(
        Key("out", "the search directory: trials/N, study.db, search.json", required=True),
        Key("trials", "trials to finish (null: the preset's search.trials, or the grid)", int),
        Key("sampler", "tpe | grid | random"),
        Key("pruner", "asha (successive halving) | hyperband | median | none"),
        Key("storage", "Optuna storage URL (null: sqlite:///OUT/study.db)"),
        Key("workers", "trials run at once (launcher=slurm|submitit_local: jobs)", int),
        Key("study", "the study's name (null: segkit_<task_name>)"),
        Key("retry", "times a trial whose worker died is run again", int),
        Key("heartbeat", "seconds between a running trial's heartbeats", int),
        Key("grace", "seconds without heartbeat before a trial is failed (null: 2 beats)", int),
        Key("sampler_seed", "the sampler's seed", int),
    ),
    run=cmd_search,
    hydra=True,
    defaults=_search_defaults,
    epilog=config_help,
)

MAKE_DEMO = Command(
    name="make-demo",
    summary="write the synthetic demo dataset (Decathlon layout)",
    description="Write the synthetic demo dataset (Decathlon layout: dataset.json, imagesTr/,\n"
    "labelsTr/, imagesTs/ and labelsTs/) unless DIR already holds one:\n\n"
    "  segkit make-demo\n  segkit make-demo data/demo2 num_cases=20 seed=1\n"
    "  segkit make-demo data/demo_sparse sparse=0.2\n"
    "  segkit make-demo data/demo_regions --regions       (BraTS-like, 4 channels)",
    keys=(
        Key("dir", "the dataset folder to write"),
        Key("num_cases", "labelled training cases (3 test cases are added)", int),
        Key("seed", "random seed; the same arguments write the same files", int),
        Key(
            "sparse",
            "annotate only this fraction of slices (last axis); the rest is 'ignore'",
            float,
            nullable=True,
        ),
        Key(
            "regions",
            "a BraTS-like dataset instead: 4 channels, nested regions (nnU-Net v2 layout)",
            bool,
        ),
    ),
    run=cmd_make_demo,
    positional=("dir",),
    defaults=_make_demo_defaults,
)

SWEEP_REPORT = Command(
    name="sweep-report",
    summary="summarise a multirun: summary.csv/.md/.png",
    description="Collect every job's overrides and metrics.json of a multirun (skipped and\n"
    "failed jobs with their reason) into summary.csv, summary.md and summary.png inside\n"
    "the sweep's directory:\n\n  segkit sweep-report outputs/demo/multiruns/2025-01-31_12-00-00\n\n"
    "On a `segkit search` directory: every trial from the study (params, FLOPs, memory,\n"
    "steps, pruned at, best Dice), the combinations never launched with their reason, and\n"
    "the Pareto fronts of Dice vs parameters and vs step time (search_summary.csv/.md/.png):\n\n"
    "  segkit sweep-report outputs/search1\n"
    '  eval "python train.py $(segkit sweep-report outputs/search1 --best)"',
    keys=(
        Key(
            "dir",
            "the sweep's hydra.sweep.dir (MULTIRUN_DIR), or a search's out=DIR",
            required=True,
        ),  # fmt: skip
        Key("metric", "metrics.json key to sort and plot by"),
        Key(
            "best",
            "search: print only the best trial's overrides for train.py",
            bool,
            default=False,
        ),  # fmt: skip
        Key(
            "storage", "search: the storage URL, when search.json hides its password", nullable=True
        ),  # fmt: skip
    ),
    run=cmd_sweep_report,
    positional=("dir",),
    defaults=_sweep_report_defaults,
)


def commands() -> dict[str, Command]:
    """Every ``segkit`` subcommand by name."""
    from segkit.configure import CONFIGURE
    from segkit.crossval.cli import CV, SELECT
    from segkit.inference.cli import EVALUATE, EXPORT, PREDICT

    found = (
        PLAN,
        CONFIGURE,
        SEARCH,
        CV,
        SELECT,
        PREDICT,
        EVALUATE,
        EXPORT,
        MAKE_DEMO,
        SWEEP_REPORT,
    )
    return {c.name: c for c in found}


def overview() -> str:
    """``segkit --help``: one line per command."""
    lines = [
        "usage: segkit COMMAND [key=value ...]   (segkit COMMAND --help lists its keys)",
        "",
        "U-Net segmentation of medical volumes with exact shapes.",
        "",
        "commands:",
    ]
    found = commands()
    width = max(map(len, found))
    lines += [f"  {name:<{width}}  {c.summary}" for name, c in found.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``segkit COMMAND ...``; a user mistake prints one line and returns 2."""
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] in ("-h", "--help"):
        print(overview(), end="", file=sys.stdout if words else sys.stderr)
        return 0 if words else 2
    found = commands()
    command = found.get(words[0])
    if command is None:
        print(
            f"segkit: error: unknown command {words[0]!r}; commands: {', '.join(found)}",
            file=sys.stderr,
        )
        return 2
    if "-h" in words[1:] or "--help" in words[1:]:
        print(help_text(command), end="")
        return 0
    try:
        return command.run(parse(command, words[1:]))
    except SegkitError as exc:
        return refuse(f"segkit {command.name}", exc)
    except InterpolationResolutionError as exc:  # an override's ${...} names nothing
        return refuse(f"segkit {command.name}", interpolation_error(exc))
    except OSError as exc:  # a write no command named its file for (stdout to a full disk)
        from segkit.fsio import disk_full, is_disk_full

        if not is_disk_full(exc):
            raise
        where = exc.filename or "an output (or the terminal's log file)"
        return refuse(f"segkit {command.name}", disk_full(where, exc))


if __name__ == "__main__":
    sys.exit(main())
