"""``segkit export format=nnunet``: a segkit checkpoint as an nnU-Net v2 model folder.

The folder (``dataset.json``, ``plans.json``, ``fold_0/checkpoint_final.pth``) is what
``nnUNetv2_predict -d``/``nnUNetPredictor.initialize_from_trained_model_folder`` and
``segkit predict ckpt=<folder>`` read:

- **network**: DNA's ``PlainConvUNet`` or ``ResidualEncoderUNet`` with segkit's configuration
  (the plans' ``architecture``), the weights by :func:`segkit.nn.weights.dna_state_dict`;
- **axes**: segkit's arrays are the image reoriented to RAS, voxel axes kept; nnU-Net's
  ``NibabelIOWithReorient`` reader reorients to RAS and reverses the axes, so
  ``transpose_forward = [2, 1, 0]`` gives nnU-Net segkit's arrays, and every per-axis value
  (spacing, patch, kernels, strides) is written in segkit's order. A 2D network becomes a
  ``2d`` configuration: nnU-Net slices across its axis 0, so the transpose puts segkit's slice
  axis first and the in-plane axes in the 2D network's order;
- **preprocessing**: segkit's target spacing, z-score or CT normalisation (with the
  checkpoint's statistics), crop to nonzero. Where the input is already at the target spacing
  the network sees the same arrays under both tools; where it must be resampled, nnU-Net uses
  its own resampling (float64 cubic, clipped), not segkit's (float32 cubic), and the inputs
  differ by that rounding. For a 2D network nnU-Net keeps the slice axis' spacing where segkit
  resamples it to the target too: the two agree on inputs at the target spacing.

Region models (one sigmoid per region) are written as nnU-Net's region training writes them:
``dataset.json`` labels naming each region's label values, and ``regions_class_order``. What
nnU-Net cannot represent is refused, naming it: blocks other than nnU-Net's,
dropout, normalisation other than instance norm, intensity normalisation other than z-score and
CT. ``check=true`` (the default) rebuilds the network from the written folder with the reader
``segkit predict`` uses for nnU-Net folders and compares its logits with the checkpoint's
network; a mismatch writes nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.errors import ConfigError, SegkitError
from segkit.inference.predict.checkpoint import LoadedModel
from segkit.inference.predict.nnunet_folder import load_nnunet_folder
from segkit.nn.weights import WeightMapError, dna_state_dict
from segkit.registry import ACTIVATIONS

CONFIGURATIONS = {3: "3d_fullres", 2: "2d"}
_RESAMPLE = "resample_data_or_seg_to_shape"
_NORMS = {"zscore": "ZScoreNormalization", "ct": "CTNormalization"}
_DNA = "dynamic_network_architectures.architectures.unet."


class NnUNetExportError(SegkitError, ValueError):
    """The written folder's network does not compute what the checkpoint's does."""


def _refuse(what: str, fix: str) -> ConfigError:
    return ConfigError(f"format=nnunet: {what}, which nnU-Net cannot represent. Fix: {fix}")


def _architecture(model: LoadedModel, cls: str) -> dict[str, Any]:
    spec = model.spec
    if spec.norm[0] != "instance" or dict(spec.norm[1]).get("affine", True) is False:
        raise _refuse(f"model.norm={spec.norm[0]}", "model.norm=instance (nnU-Net's)")
    act, kwargs = spec.act[0], dict(spec.act[1])
    if act not in ACTIVATIONS:
        raise _refuse(f"model.act={act}", "model.act=leakyrelu")
    nonlin_kwargs = {**dict(ACTIVATIONS[act][1]), **kwargs}
    kw: dict[str, Any] = {
        "n_stages": spec.depth,
        "features_per_stage": list(spec.channels),
        "conv_op": f"torch.nn.modules.conv.Conv{spec.spatial_dims}d",
        "kernel_sizes": [list(k) for k in spec.kernel_size],
        "strides": [list(s) for s in spec.strides],
        "n_conv_per_stage_decoder": list(spec.convs_per_stage_decoder),
        "conv_bias": bool(spec.conv_bias),
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{spec.spatial_dims}d",
        "norm_op_kwargs": {"eps": float(dict(spec.norm[1]).get("eps", 1e-5)), "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": ACTIVATIONS[act][0],
        "nonlin_kwargs": nonlin_kwargs,
    }
    if cls == "PlainConvUNet":
        kw["n_conv_per_stage"] = list(spec.convs_per_stage)
    else:
        kw["n_blocks_per_stage"] = list(spec.blocks_per_stage)
    return {
        "network_class_name": _DNA + cls,
        "arch_kwargs": kw,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _preprocessing(model: LoadedModel) -> tuple[list[str], dict[str, dict[str, float]]]:
    pre = model.preprocessor
    if pre is None or not hasattr(pre, "normalization"):
        raise _refuse("a checkpoint without segkit's preprocessing", "export a segkit checkpoint")
    schemes, props = [], {}
    for c, name in enumerate(pre.normalization):
        if name not in _NORMS:
            raise _refuse(f"channel {c} normalisation {name!r}", "zscore or ct normalisation")
        schemes.append(_NORMS[name])
        stats = pre.intensity_stats[c] if c < len(pre.intensity_stats) else None
        props[str(c)] = (
            {
                "mean": float(stats.mean),
                "std": float(stats.std),
                "percentile_00_5": float(stats.lower),
                "percentile_99_5": float(stats.upper),
            }
            if stats is not None
            else {"mean": 0.0, "std": 1.0, "percentile_00_5": 0.0, "percentile_99_5": 1.0}
        )
    if not pre.crop_nonzero:
        raise _refuse("crop_nonzero=false", "a checkpoint trained with cropping (the default)")
    return schemes, props


def nnunet_folder_contents(model: LoadedModel, name: str = "segkit") -> dict[str, Any]:
    """``plans.json``, ``dataset.json`` and the checkpoint dict of the export.

    Raises:
        ConfigError: what nnU-Net cannot represent, naming it and the fix.
    """
    spec = model.spec
    if model.head.is_regions and len(model.regions) != spec.out_channels:
        raise _refuse(
            "region outputs whose label values the checkpoint does not record",
            "retrain with this segkit (its region checkpoints store each region's labels)",
        )
    try:
        cls, state = dna_state_dict(model.net)
    except WeightMapError as err:
        raise _refuse(f"this network ({err})", "a PlainConvUNet or ResEnc configuration") from err
    schemes, props = _preprocessing(model)
    pre = model.preprocessor
    configuration = CONFIGURATIONS[spec.spatial_dims]
    order = _axis_order(model)
    spacing3 = [float(pre.target_spacing[a]) for a in order]
    patch = _patch(model)
    spacing = spacing3[-spec.spatial_dims :]  # 2d: in-plane (nnU-Net keeps the slice spacing)
    resample = {
        "resampling_fn_data": _RESAMPLE,
        "resampling_fn_seg": _RESAMPLE,
        "resampling_fn_probabilities": _RESAMPLE,
        # segkit resamples every axis alike (never nnU-Net's separate z)
        "resampling_fn_data_kwargs": {
            "is_seg": False,
            "order": 3,
            "order_z": 0,
            "force_separate_z": False,
        },
        "resampling_fn_seg_kwargs": {
            "is_seg": True,
            "order": 1,
            "order_z": 0,
            "force_separate_z": False,
        },
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": False,
        },
    }
    plans = {
        "dataset_name": f"Dataset999_{name}",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing3,
        "original_median_shape_after_transp": [1] * (3 - len(patch)) + patch,
        "image_reader_writer": "NibabelIOWithReorient",
        # the reader's axes are segkit's reversed: segkit axis a is the reader's 2 - a
        "transpose_forward": [2 - a for a in order],
        "transpose_backward": [int(i) for i in np.argsort([2 - a for a in order])],
        "configurations": {
            configuration: {
                "data_identifier": f"nnUNetPlans_{configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch,
                "median_image_size_in_voxels": patch,
                "spacing": spacing,
                "normalization_schemes": schemes,
                "use_mask_for_norm": [False] * len(schemes),
                **resample,
                "architecture": _architecture(model, cls),
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "segkit export format=nnunet",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": props,
    }
    dataset = {
        "channel_names": {str(c): f"channel{c}" for c in range(spec.in_channels)},
        "labels": _labels(model),
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    if model.head.is_regions:  # nnU-Net's region training: one sigmoid per region, in order
        dataset["regions_class_order"] = list(model.head.region_order)
    checkpoint = {
        "network_weights": state,
        "init_args": {"configuration": configuration, "fold": 0, "plans": plans},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": tuple(range(spec.spatial_dims)),
        "current_epoch": 0,
        "_best_ema": None,
    }
    return {"plans": plans, "dataset": dataset, "checkpoint": checkpoint}


def _axis_order(model: LoadedModel) -> list[int]:
    """segkit's volume axes in the order nnU-Net works in: as they are for a 3D network; for a
    2D network the slice axis first (nnU-Net's 2d configurations slice across axis 0), then
    the in-plane axes in the 2D network's order."""
    if model.spec.spatial_dims == 3:
        return [0, 1, 2]
    s = int(model.slice_axis)
    return [s, *(a for a in range(3) if a != s)]


def _patch(model: LoadedModel) -> list[int]:
    """The network's patch (2 values for a 2D network, whose patch may list the slice axis)."""
    patch = [int(p) for p in model.patch_size]
    if model.spec.spatial_dims == 2 and len(patch) == 3:
        del patch[model.slice_axis]
    return patch


def _labels(model: LoadedModel) -> dict[str, Any]:
    """dataset.json's ``labels``: the classes, or background and each region's label values
    in output-channel order (nnU-Net's LabelManager takes the regions in that order)."""
    if model.head.is_regions:
        return {"background": 0, **{r.name: list(r.labels) for r in model.regions}}
    names = model.label_names
    labels = {names.get(i, f"class{i}"): i for i in range(model.spec.out_channels)}
    if "background" not in labels:  # nnU-Net requires the name
        labels = {"background": 0, **{k: v for k, v in labels.items() if v}}
    return labels


def export_nnunet(
    model: LoadedModel, output: str | Path, *, check: bool = True, tolerance: float = 1e-5
) -> float | None:
    """Writes ``output/`` as an nnU-Net v2 model folder (see the module).

    ``output`` must not exist or be empty; the folder is written beside it under a temporary
    name and renamed when complete (and checked), so nothing half-written is left.

    Returns:
        With ``check``: the largest ``|rebuilt − checkpoint|`` logit difference relative to the
        largest logit; else None.

    Raises:
        ConfigError: what nnU-Net cannot represent, or an ``output`` that holds files.
        NnUNetExportError: the rebuilt network disagrees beyond ``tolerance``.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(
            f"output={output}: exists and is not an empty folder. Fix: choose a new folder "
            "for the nnU-Net model (e.g. output=nnunet_model/)"
        )
    contents = nnunet_folder_contents(model, name=output.name.replace("_", "-") or "segkit")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        (tmp / "plans.json").write_text(json.dumps(contents["plans"], indent=2))
        (tmp / "dataset.json").write_text(json.dumps(contents["dataset"], indent=2))
        (tmp / "fold_0").mkdir()
        torch.save(contents["checkpoint"], tmp / "fold_0" / "checkpoint_final.pth")
        error = _check(model, tmp, tolerance) if check else None
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return error


def _check(model: LoadedModel, folder: Path, tolerance: float) -> float:
    """Rebuilds the written folder's network and compares logits at the patch size."""
    _, (rebuilt,) = load_nnunet_folder(folder)
    net = model.net.eval().cpu()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.spec.in_channels, *_patch(model), generator=gen)
    with torch.no_grad():
        want, got = net(x), rebuilt.net.cpu()(x)
    error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    if not np.isfinite(error) or error > tolerance:
        raise NnUNetExportError(
            f"format=nnunet: the network rebuilt from {folder}/plans.json differs from the "
            f"checkpoint's by {error:.2e} (relative; tolerance {tolerance:g}); nothing was "
            "written. This is a segkit bug: please report it with the checkpoint's model config."
        )
    return error


__all__ = ["NnUNetExportError", "export_nnunet", "nnunet_folder_contents"]
