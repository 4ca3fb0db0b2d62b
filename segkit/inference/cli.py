"""``segkit predict | export | evaluate``: their keys (segkit's key=value grammar) and runs."""

from __future__ import annotations

from pathlib import Path

from segkit.args import Arguments, Command, Key, signature_defaults
from segkit.table import format_table

PREDICT_HELP = """\
Predict NIfTI images with a trained checkpoint (the checkpoint alone is enough):

  segkit predict ckpt=RUN/checkpoints/best.ckpt input=FILE_OR_DIR output=DIR
  segkit predict ckpt=fold0/best.ckpt,fold1/best.ckpt input=DIR output=DIR tta=true

ckpt: a checkpoint, several (a.ckpt,b.ckpt: an ensemble averaging their probabilities),
a multirun directory of folds (*/checkpoints/best.ckpt), a `segkit cv` directory, or
the folder (or decision.json) `segkit select` wrote: then the selected configuration(s)'
fold checkpoints, post-processing and inference settings are the defaults, and any key
given here wins (postprocess=none turns the post-processing off).
input: one image, a folder of images (Decathlon 4D files or nnU-Net {case}_0000.nii.gz
channel files), or a dataset folder (its imagesTs/ is used). One {case}.nii.gz label map
per case is written to output (never the input folder) with the input's shape, affine
and header.
mode=auto (default) runs the whole volume only where that gives the sliding window's
answer, else a Gaussian sliding window of the training patch; overlap and window_scale
default to the setting measured on the validation fold at the end of training (stored
in the checkpoint), else 0.5 and 1. One line per case says what ran and why.
part=I/N splits a folder over N processes, GPUs or cluster jobs (each writes its share
into the same output folder; together they write exactly the cases of one run):
  for i in 1 2; do segkit predict ckpt=C input=DIR output=OUT part=$i/2 & done; wait
workers=K reads and preprocesses the next K cases while the current one is inferred.
postprocess=[largest_foreground,largest_per_class]: keep the largest connected component
of all foreground, then of each class (segkit select decides these from the CV).
ckpt may also be an nnU-Net v2 model folder (dataset.json, plans.json, fold_X/, e.g. a
TotalSegmentator model): it is predicted as nnU-Net's predictor does (its preprocessing,
tile step 0.5, mirroring on, the folds' logits averaged, its export):
  segkit predict ckpt=nnUNet_results/Dataset001/nnUNetTrainer__nnUNetPlans__3d_fullres \
      input=imagesTs output=pred nnunet_folds=[0,1] nnunet_checkpoint=final
"""

EXPORT_HELP = """\
Export a trained network for any input size:

  segkit export ckpt=RUN/checkpoints/best.ckpt format=onnx|torchscript output=FILE

or as an nnU-Net v2 model folder (nnUNetv2_predict and segkit predict read it):

  segkit export ckpt=RUN/checkpoints/best.ckpt format=nnunet output=DIR

ONNX has dynamic batch and spatial axes (needs pip install 'segkit[export]');
TorchScript is traced from a size-free wrapper. Both are compared with the eager
model on two odd input sizes (check=true) and the max abs difference is printed; above
tolerance × max(1, max |eager logits|) the command fails (exit 2) and writes nothing.
"""

EVALUATE_HELP = """\
Dice, HD95 (mm) and normalised surface Dice (NSD) per case and class of predicted label maps:

  segkit evaluate pred=DIR labels=DIR [output=FILE.csv] [num_classes=K] [nsd_tolerance=1.0]

Files are matched by name. Every reference case is scored: one without a prediction is a
failure (Dice 0, NSD 0, status "no prediction"). A class absent from both maps is NaN and
left out of means; the mean row's dice_mean is the mean over classes of each class's mean
over cases, the same number as val/dice_mean during training. nnU-Net's summary.json layout
(metric_per_case, mean, foreground_mean) is written to summary= (default {pred}/summary.json).
nsd_tolerance: mm, one value or one per foreground class ([1.0,2.0,...]).
"""


def cmd_predict(args: Arguments) -> int:
    """``segkit predict``: label maps of every case under ``input``."""
    from segkit.inference.predict.decision import find_selection
    from segkit.inference.predict.run import PredictOptions, predict

    kv = dict(args.values)
    paths = {k: kv.pop(k) for k in ("ckpt", "input", "output")}
    trusted = kv.pop("trust", [])
    if "postprocess" in kv:
        kv["postprocess"] = [s for s in kv["postprocess"] or () if s != "none"]
    selection = find_selection(paths["ckpt"])
    opts = PredictOptions(**kv)
    if selection is not None:  # its settings are the defaults; keys given here win
        opts = selection.fill(opts, given=set(kv))
        paths["ckpt"] = list(selection.checkpoints)
        given = ", ".join(f"{k}={v}" for k, v in kv.items() if k in selection.options)
        print(selection.describe() + (f"; given here (they win): {given}" if given else ""))
    written = predict(**paths, options=opts, trusted_targets=trusted)
    print(f"wrote {len(written)} prediction(s) to {paths['output']}")
    return 0


def _predict_defaults() -> dict:
    from segkit.inference.predict.run import PredictOptions, predict

    return {
        **signature_defaults(predict, trust="trusted_targets"),
        **signature_defaults(PredictOptions),
    }


def cmd_export(args: Arguments) -> int:
    """``segkit export``: an ONNX or TorchScript file checked against the eager network."""
    from segkit.inference.export import describe_checks, export_model
    from segkit.inference.predict.checkpoint import load_model

    kv = dict(args.values)
    model = load_model(kv.pop("ckpt"), trusted_targets=kv.pop("trust", []))
    kv["fmt"] = kv.pop("format")
    if kv["fmt"] == "nnunet":
        from segkit.inference.nnunet_export import export_nnunet

        error = export_nnunet(model, kv["output"], check=kv["check"])
        print(f"wrote an nnU-Net v2 model folder to {kv['output']}")
        if error is not None:
            print(f"check: the network rebuilt from its plans.json matches (max |Δ| {error:.1e})")
        return 0
    checks = export_model(model.net, patch_size=model.patch_size, **kv)
    print(f"wrote {kv['fmt']} model to {kv['output']}")
    if checks:
        print(describe_checks(checks))
    return 0


def _export_defaults() -> dict:
    from segkit.inference.export import export_model
    from segkit.inference.predict.checkpoint import load_model

    return {
        **signature_defaults(load_model, trust="trusted_targets"),
        **signature_defaults(export_model),
    }


def cmd_evaluate(args: Arguments) -> int:
    """``segkit evaluate``: Dice and HD95 per case and class, printed (and written as CSV)."""
    from segkit.inference.metrics.evaluate import (
        DEFAULT_NSD_TOLERANCE,
        describe_missing,
        evaluate,
        summary_rows,
        write_csv,
        write_summary,
    )

    kv = dict(args.values)
    output = kv.pop("output", None)
    summary = kv.pop("summary", None) or Path(kv["pred"]) / "summary.json"
    scores = evaluate(**kv)
    header, rows = summary_rows(scores)
    print(format_table(header, rows))
    if describe_missing(scores):
        print(describe_missing(scores))
    print("HD95 in mm: the larger directed 95th percentile surface distance (MONAI's convention)")
    tol = kv.get("nsd_tolerance", DEFAULT_NSD_TOLERANCE)
    print(
        f"NSD at nsd_tolerance={tol} mm: area-weighted surface elements (DeepMind "
        "surface-distance's convention; MONAI's use_subvoxels=True)"
    )
    print(f"wrote {write_summary(summary, scores, nsd_tolerance=tol)}")
    if output:
        print(f"wrote {write_csv(output, header, rows)}")
    return 0


def _evaluate_defaults() -> dict:
    from segkit.inference.metrics.evaluate import evaluate

    return {**signature_defaults(evaluate), "output": None, "summary": None}


_TRUST = Key(
    "trust",
    "user block classes (pkg.module.Block, a,b or [a,b]) the checkpoint may import; their "
    "code runs",
    list,
)

PREDICT = Command(
    name="predict",
    summary="predict NIfTI images with a checkpoint",
    description=PREDICT_HELP,
    keys=(
        Key(
            "ckpt",
            "a checkpoint, several (a.ckpt,b.ckpt: an ensemble), a folder of folds, or a "
            "`segkit select` decision (its folder or decision.json)",
            required=True,
        ),
        Key(
            "input",
            "an image, a folder of images or a dataset folder (its imagesTs/)",
            required=True,
        ),
        Key("output", "the folder written, one {case}.nii.gz per case", required=True),
        Key("mode", "auto | whole | sliding"),
        Key(
            "overlap",
            "sliding-window overlap in [0, 1); null: the checkpoint's measured one",
            float,
            nullable=True,
        ),
        Key(
            "window_scale",
            "window as a multiple of the training patch; null: measured",
            float,
            nullable=True,
        ),
        Key(
            "tta",
            "mirroring test-time augmentation; null: off for segkit checkpoints, on for "
            "nnU-Net model folders (their allowed axes)",
            bool,
            nullable=True,
        ),
        Key("save_probabilities", "also write {case}.npz with class probabilities", bool),
        Key("device", "auto | cpu | cuda | cuda:N"),
        Key("sw_batch_size", "windows per forward call; null: 4 (3D), 32 (2D)", int, nullable=True),
        Key("progress", "progress bars over cases and windows", bool),
        Key(
            "part",
            "I/N: only the I-th of N disjoint shares of the cases (sorted case ids, every "
            "N-th from the I-th), one per process or job",
        ),
        Key("workers", "threads reading the next cases during inference (0: none)", int),
        Key("max_memory_gb", "budget (GB): tile layout and window batch", float, nullable=True),
        Key(
            "postprocess",
            "steps on each label map: largest_foreground, largest_per_class ([a,b]), or none",
            list,
            nullable=True,
        ),
        Key(
            "nnunet_folds",
            "an nnU-Net model folder's folds to average ([0,1] or [all]); null: all found",
            list,
            nullable=True,
        ),
        Key("nnunet_checkpoint", "an nnU-Net model folder's checkpoint: final | best"),
        _TRUST,
    ),
    run=cmd_predict,
    defaults=_predict_defaults,
)

EXPORT = Command(
    name="export",
    summary="export a checkpoint to ONNX or TorchScript",
    description=EXPORT_HELP,
    keys=(
        Key("ckpt", "the checkpoint", required=True),
        Key("format", "onnx | torchscript | nnunet", required=True),
        Key("output", "the file written (nnunet: a new folder)", required=True),
        Key("check", "compare with the eager network on two odd input sizes", bool),
        Key("tolerance", "largest max |export - eager|, relative to max(1, max |logits|)", float),
        _TRUST,
    ),
    run=cmd_export,
    defaults=_export_defaults,
)

EVALUATE = Command(
    name="evaluate",
    summary="Dice/HD95/NSD of predictions against labels",
    description=EVALUATE_HELP,
    keys=(
        Key("pred", "folder of predicted label maps ({case}.nii.gz)", required=True),
        Key("labels", "folder of reference label maps with the same names", required=True),
        Key("output", "also write the table as CSV to this file", nullable=True),
        Key("summary", "the summary.json written; null: {pred}/summary.json", nullable=True),
        Key("nsd_tolerance", "NSD tolerance (mm): one value or one per foreground class", list),
        Key(
            "num_classes",
            "classes incl. background; null: largest value found + 1",
            int,
            nullable=True,
        ),
        Key(
            "ignore_label",
            "unannotated reference voxels, left out; null: dataset.json's ignore, if any",
            int,
            nullable=True,
        ),
        Key("progress", "a progress bar over cases", bool),
    ),
    run=cmd_evaluate,
    defaults=_evaluate_defaults,
)
