"""``segkit cv | select``: their keys (segkit's key=value grammar) and runs."""

from __future__ import annotations

from segkit.args import Arguments, Command, Key, signature_defaults
from segkit.errors import ConfigError

CV_HELP = """\
Cross-validate one configuration in one command: train every fold through the configured
Hydra launcher (one multirun over data.fold), predict each fold's validation cases with
that fold's best checkpoint on their original grid, and score them:

  segkit cv data=msd data.root=PATH folds=5 out=cv/3d_plain
  segkit cv data=msd data.root=PATH model=resenc out=cv/3d_resenc launcher=slurm trainer=gpu
  segkit cv from=outputs/msd/multiruns/2025-01-31_12-00-00 out=cv/3d_plain

Any other key=value is a train.py override (launcher=local|joblib|submitit_local|slurm
included). out/ receives folds/ (the multirun, fold_K/ per fold), oof/ (one {case}.nii.gz
and {case}.npz of probabilities per training case) and summary.json (segkit evaluate's
per case, per class and mean, plus a crossval entry: each fold's status and checkpoint,
and which folds are missing or failed; their cases count as failures).
from=MULTIRUN_DIR summarises folds trained before (python train.py -m data.fold=0,1,2,3,4);
out defaults to that directory. Then: segkit select out1 out2 ...
"""

SELECT_HELP = """\
Choose, from the cross-validations of one or more configurations, the best configuration
or ensemble (their out-of-fold probabilities averaged) and its post-processing (keep the
largest connected component of all foreground, then of each class: each step kept only
where it raises the CV mean Dice), and write the decision:

  segkit select cv/3d_plain cv/3d_resenc cv/2d out=cv/selection
  segkit predict ckpt=cv/selection input=DIR output=DIR

Every decision is printed with the CV numbers behind it. decision.json names each
configuration's fold checkpoints, the post-processing and the inference settings; segkit
predict ckpt=<its folder or the file> uses them as its defaults. CVs with missing or
failed folds are refused unless allow_incomplete=true; configurations with other label
sets, inputs or preprocessing are refused (they neither compare nor average).
"""


def cmd_cv(args: Arguments) -> int:
    """``segkit cv``: folds, out-of-fold predictions and summary.json of one configuration."""
    from segkit.crossval.oof import run_cv, summarise

    kv = dict(args.values)
    source = kv.pop("from", None)
    if source is None:
        run_cv(args.overrides, **kv)
        return 0
    if args.overrides or kv.get("folds") is not None:
        raise ConfigError(
            f"segkit cv from={source}: summarises folds already trained, so training "
            f"overrides ({' '.join(args.overrides) or 'folds='}) would change nothing. Fix: "
            "drop them, or train anew without from=."
        )
    kv.pop("folds", None)
    summarise(source, **kv)
    return 0


def _cv_defaults() -> dict:
    from segkit.crossval.oof import run_cv

    return {**signature_defaults(run_cv), "from": None}


def cmd_select(args: Arguments) -> int:
    """``segkit select``: the decision file from one or more CV directories."""
    from segkit.crossval.select import select

    kv = dict(args.values)
    select([str(d) for d in kv.pop("cv_dirs")], **kv)  # folders, whatever they look like
    return 0


def _select_defaults() -> dict:
    from segkit.crossval.select import select

    return signature_defaults(select)


CV = Command(
    name="cv",
    summary="cross-validate a configuration: folds, out-of-fold predictions, summary.json",
    description=CV_HELP,
    keys=(
        Key(
            "folds",
            "number of folds (data.num_folds); null: data.num_folds or 5",
            int,
            nullable=True,
        ),
        Key("out", "the CV directory; null: outputs/<task_name>/cv/<date_time>", nullable=True),
        Key(
            "from", "an existing multirun of folds to summarise instead of training", nullable=True
        ),
        Key("tta", "mirroring test-time augmentation for the out-of-fold predictions", bool),
        Key("device", "auto | cpu | cuda | cuda:N (for the out-of-fold predictions)"),
    ),
    run=cmd_cv,
    hydra=True,
    defaults=_cv_defaults,
)

SELECT = Command(
    name="select",
    summary="best configuration/ensemble and post-processing from CVs -> decision.json",
    description=SELECT_HELP,
    keys=(
        Key(
            "cv_dirs",
            "CV directories written by segkit cv (one per configuration)",
            list,
            required=True,
        ),
        Key(
            "out",
            "the folder of decision.json; null: selection/ beside the first CV",
            nullable=True,
        ),
        Key("allow_incomplete", "select from CVs with missing or failed folds", bool),
    ),
    run=cmd_select,
    positional=("cv_dirs",),
    defaults=_select_defaults,
)
