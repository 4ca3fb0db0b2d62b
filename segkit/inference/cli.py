"""``segkit predict | export | evaluate``: key=value arguments, clear errors, exit code 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from segkit.errors import ConfigError
from segkit.table import format_table

PREDICT_HELP = """\
Predict NIfTI images with a trained checkpoint (the checkpoint alone is enough):

  segkit predict ckpt=RUN/checkpoints/best.ckpt input=FILE_OR_DIR output=DIR \\
      [mode=auto|whole|sliding] [overlap=...] [window_scale=...] [tta=false] \\
      [save_probabilities=false] [device=auto] [sw_batch_size=4] [progress=true]

ckpt: a checkpoint, several (a.ckpt,b.ckpt: an ensemble averaging their probabilities),
or a multirun directory of folds (*/checkpoints/best.ckpt).
input: one image, a folder of images (Decathlon 4D files or nnU-Net {case}_0000.nii.gz
channel files), or a dataset folder (its imagesTs/ is used). One {case}.nii.gz label map
per case is written to output (never the input folder) with the input's shape, affine
and header.
mode=auto (default) runs the whole volume only where that gives the sliding window's
answer, else a Gaussian sliding window of the training patch; overlap and window_scale
default to the setting measured on the validation fold at the end of training (stored
in the checkpoint), else 0.5 and 1. One line per case says what ran and why.
trust=pkg.module.Block[,...]: user block classes a checkpoint may import (their code runs).
"""

EXPORT_HELP = """\
Export a trained network for any input size:

  segkit export ckpt=RUN/checkpoints/best.ckpt format=onnx|torchscript output=FILE \\
      [check=true] [tolerance=1e-3]

ONNX has dynamic batch and spatial axes (needs pip install 'segkit[export]');
TorchScript is traced from a size-free wrapper. Both are compared with the eager
model on two odd input sizes and the max abs difference is printed; above
tolerance × max(1, max |eager logits|) the command fails (exit 2) and writes nothing.
"""

EVALUATE_HELP = """\
Dice and HD95 (mm) per case and class of predicted label maps:

  segkit evaluate pred=DIR labels=DIR [output=FILE.csv] [num_classes=K]

Files are matched by name. Every reference case is scored: one without a prediction is a
failure (Dice 0, status "no prediction"). A class absent from both maps is NaN and left out
of means; the mean row's dice_mean is the mean over classes of each class's mean over cases,
the same number as val/dice_mean during training.
"""

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _as_bool(key: str, value: str) -> bool:
    if value.lower() not in _BOOL:
        raise ConfigError(f"{key}: got {value!r}; expected true or false")
    return _BOOL[value.lower()]


def _as_number(kind: Callable[[str], Any]) -> Callable[[str, str], Any]:
    def convert(key: str, value: str) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(
                f"{key}: got {value!r}; expected a{'n integer' if kind is int else ' number'}"
            ) from None

    return convert


def _as_str(key: str, value: str) -> str:
    return value


def parse_kv(
    items: Sequence[str],
    schema: dict[str, Callable[[str, str], Any]],
    *,
    required: Sequence[str],
    command: str,
) -> dict[str, Any]:
    """``["a=1", "b=x"]`` → ``{"a": 1, "b": "x"}`` checked against ``schema``."""
    out: dict[str, Any] = {}
    allowed = ", ".join(schema)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {item!r} is not key=value; keys: {allowed}")
        if key not in schema:
            raise ConfigError(f"unknown key {key!r}; allowed: {allowed}")
        out[key] = schema[key](key, value)
    missing = [k for k in required if k not in out]
    if missing:
        raise ConfigError(
            f"missing {', '.join(f'{k}=...' for k in missing)}; see segkit {command} --help"
        )
    return out


def _trusted(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def cmd_predict(args: argparse.Namespace) -> int:
    from segkit.inference.predict import PredictOptions, predict

    kv = parse_kv(
        args.args,
        {
            "ckpt": _as_str,
            "input": _as_str,
            "output": _as_str,
            "mode": _as_str,
            "overlap": _as_number(float),
            "window_scale": _as_number(float),
            "tta": _as_bool,
            "save_probabilities": _as_bool,
            "device": _as_str,
            "sw_batch_size": _as_number(int),
            "progress": _as_bool,
            "trust": _as_str,
        },
        required=("ckpt", "input", "output"),
        command="predict",
    )
    paths = {k: kv.pop(k) for k in ("ckpt", "input", "output")}
    trusted = _trusted(kv.pop("trust", ""))
    written = predict(**paths, options=PredictOptions(**kv), trusted_targets=trusted)
    print(f"wrote {len(written)} prediction(s) to {paths['output']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from segkit.inference.checkpoint import load_model
    from segkit.inference.export import describe_checks, export_model

    kv = parse_kv(
        args.args,
        {
            "ckpt": _as_str,
            "format": _as_str,
            "output": _as_str,
            "check": _as_bool,
            "tolerance": _as_number(float),
            "trust": _as_str,
        },
        required=("ckpt", "format", "output"),
        command="export",
    )
    model = load_model(kv["ckpt"], trusted_targets=_trusted(kv.get("trust", "")))
    checks = export_model(
        model.net,
        fmt=kv["format"],
        output=kv["output"],
        patch_size=model.patch_size,
        check=kv.get("check", True),
        tolerance=kv.get("tolerance", 1e-3),
    )
    print(f"wrote {kv['format']} model to {kv['output']}")
    if checks:
        print(describe_checks(checks))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from segkit.inference.evaluate import describe_missing, evaluate, summary_rows, write_csv

    kv = parse_kv(
        args.args,
        {
            "pred": _as_str,
            "labels": _as_str,
            "output": _as_str,
            "num_classes": _as_number(int),
            "progress": _as_bool,
        },
        required=("pred", "labels"),
        command="evaluate",
    )
    scores = evaluate(
        pred=kv["pred"],
        labels=kv["labels"],
        num_classes=kv.get("num_classes"),
        progress=kv.get("progress", False),
    )
    header, rows = summary_rows(scores)
    print(format_table(header, rows))
    if describe_missing(scores):
        print(describe_missing(scores))
    print("HD95 in mm: the larger directed 95th percentile surface distance (MONAI's convention)")
    if kv.get("output"):
        print(f"wrote {write_csv(kv['output'], header, rows)}")
    return 0


def add_parsers(sub: Any) -> None:
    """Adds ``predict``, ``export`` and ``evaluate`` to the ``segkit`` subparsers."""
    for name, help_, text, func in (
        ("predict", "predict NIfTI images with a checkpoint", PREDICT_HELP, cmd_predict),
        ("export", "export a checkpoint to ONNX or TorchScript", EXPORT_HELP, cmd_export),
        ("evaluate", "Dice/HD95 of predictions against labels", EVALUATE_HELP, cmd_evaluate),
    ):
        p = sub.add_parser(
            name, help=help_, description=text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("args", nargs="*", metavar="key=value")
        p.set_defaults(func=func)
