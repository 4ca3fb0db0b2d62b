"""nnU-Net interoperability: an ``nnUNetPlans.json`` configuration as a segkit config.

nnU-Net stores sizes in its *transposed* array order: its readers reverse the file's voxel
axes (SimpleITK order), then ``transpose_forward`` puts the coarsest axis first. segkit's
arrays keep the voxel axes (reoriented to RAS), so each per-axis value is mapped back with
``transpose_forward`` and reversed (``reverse_axes=False`` keeps nnU-Net's untransposed array
order instead).

The network is the one dynamic-network-architectures builds from the plan: PlainConvUNet
(convs per stage, strided-conv downsampling, transposed-conv upsampling, a logits head per
decoder stage) or, where segkit has the ``resenc`` model family, ResidualEncoderUNet. The
preprocessing is nnU-Net's own, reproduced (:func:`preprocessor_from_plans`; arrays stay in
nnU-Net's transposed order).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segkit.data.nnunet_preprocess import NnUNetPreprocessor, Resampling
from segkit.errors import ConfigError, SegkitError
from segkit.fsio import read_json
from segkit.nn import plan_unet
from segkit.planner.memory import optimizer_state_count, training_memory
from segkit.planner.result import PLANNED_KEYS, PlannerOptions, PlannerResult
from segkit.planner.rules import _axes, _fmt, explain_topology
from segkit.registry import ACTIVATIONS
from segkit.spec import MAX_DEPTH, UNetSpec

_NORMS = {"instancenorm": "instance", "batchnorm": "batch", "groupnorm": "group"}
# nnU-Net names torch.nn classes; segkit registers its activations by the same classes
_ACTS = {path.rsplit(".", 1)[-1].lower(): name for name, (path, _) in ACTIVATIONS.items()}


def read_plans(path: Path) -> dict[str, Any]:
    """Parses an nnU-Net plans file, with a clear error for a missing or broken one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"plans={path}: no such file. Fix: give the nnUNetPlans.json of a preprocessed "
            "dataset, e.g. plans=$nnUNet_preprocessed/Dataset004_Hippocampus/nnUNetPlans.json"
        )
    try:
        plans = read_json(path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"plans={path}: cannot be read as JSON ({err}). Fix: give the nnUNetPlans.json "
            "nnU-Net wrote (nnUNetv2_plan_and_preprocess), unchanged."
        ) from err
    if not isinstance(plans, dict) or "configurations" not in plans:
        raise ConfigError(
            f"plans={path}: no 'configurations'; is this an nnU-Net plans file? Fix: give the "
            "nnUNetPlans.json nnU-Net wrote (nnUNetv2_plan_and_preprocess), unchanged."
        )
    return plans


def resolve_configuration(plans: dict[str, Any], name: str, *, source: str = "") -> dict[str, Any]:
    """A configuration with ``inherits_from`` applied (parents first)."""
    configs = plans["configurations"]
    if name not in configs:
        raise ConfigError(
            f"configuration={name} is not in {source or 'the plans'}; it has: "
            f"{', '.join(configs)}. Fix: configuration={next(iter(configs), '3d_fullres')}"
        )
    seen: list[str] = []
    chain = []
    current = name
    while current is not None:
        if current in seen:
            raise ConfigError(f"{source}: configurations inherit in a cycle: {seen + [current]}")
        seen.append(current)
        cfg = configs[current]
        chain.append(cfg)
        current = cfg.get("inherits_from")
        if current is not None and current not in configs:
            raise ConfigError(f"{source}: {seen[-1]} inherits from unknown {current!r}")
    merged: dict[str, Any] = {}
    for cfg in reversed(chain):
        merged = _merge(merged, cfg)
    merged.pop("inherits_from", None)
    return merged


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def axis_map(plans: dict[str, Any], ndim: int, *, reverse_axes: bool = True) -> list[int]:
    """For each segkit axis, the index of the same axis in nnU-Net's transposed lists.

    For a 2D configuration the lists hold the two in-plane axes (nnU-Net's transposed axes
    1 and 2); the result then has two entries, for segkit's in-plane axes in increasing order.
    """
    forward = list(plans.get("transpose_forward", [0, 1, 2]))
    # segkit axis j is nnU-Net array axis 2 - j (reverse) or j (keep).
    array_axis = [(2 - j) if reverse_axes else j for j in range(3)]
    position = [forward.index(a) for a in array_axis]
    if ndim == 3:
        return position
    return [p - 1 for p in position if p != 0]


def slice_axis_of(plans: dict[str, Any], *, reverse_axes: bool = True) -> int:
    """segkit axis that nnU-Net's 2D configuration slices across."""
    first = list(plans.get("transpose_forward", [0, 1, 2]))[0]
    return 2 - first if reverse_axes else first


def _per_stage(values: Any, n: int, ndim: int) -> list[list[int]]:
    if isinstance(values, int):
        return [[values] * ndim for _ in range(n)]
    out = []
    for v in values:
        out.append([int(v)] * ndim if isinstance(v, int) else [int(x) for x in v])
    return out


def _pick(values: Sequence[Any], order: Sequence[int]) -> list[Any]:
    return [values[i] for i in order]


def _short(name: str | None) -> str:
    return (name or "").rsplit(".", 1)[-1]


def model_from_plans(
    configuration: dict[str, Any],
    order: Sequence[int],
    *,
    resenc_family: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """The segkit ``model`` keys of a plan's architecture, and the network's class name.

    Raises:
        ConfigError: An architecture segkit cannot express (names the class and the fix).
    """
    arch = configuration.get("architecture")
    if not isinstance(arch, dict) or "arch_kwargs" not in arch:
        raise ConfigError(
            "this configuration has no 'architecture' with 'arch_kwargs' (nnU-Net < 2.4 plans "
            "are not supported). Fix: re-plan with nnU-Net >= 2.4 or use planner=auto."
        )
    cls = _short(arch.get("network_class_name"))
    kw = arch["arch_kwargs"]
    ndim = len(order)
    n = int(kw["n_stages"])
    if not 1 <= n <= MAX_DEPTH:
        raise ConfigError(f"architecture n_stages={n}: expected 1..{MAX_DEPTH}.")
    kernels = [_pick(k, order) for k in _per_stage(kw["kernel_sizes"], n, ndim)]
    strides = [_pick(s, order) for s in _per_stage(kw["strides"], n, ndim)]
    features = kw["features_per_stage"]
    features = [int(features)] * n if isinstance(features, int) else [int(f) for f in features]
    norm_name = _short(kw.get("norm_op")).lower().rstrip("123d")
    norm = _NORMS.get(norm_name, "none" if not kw.get("norm_op") else None)
    if norm is None:
        raise ConfigError(f"architecture norm_op {kw.get('norm_op')!r}: segkit has none like it.")
    act_name = _short(kw.get("nonlin")).lower()
    if act_name not in _ACTS:
        raise ConfigError(f"architecture nonlin {kw.get('nonlin')!r}: segkit has none like it.")
    act: dict[str, Any] = {"name": _ACTS[act_name]}
    slope = (kw.get("nonlin_kwargs") or {}).get("negative_slope")
    if act_name == "leakyrelu" and slope is not None:
        act["negative_slope"] = float(slope)
    dropout = (
        float((kw.get("dropout_op_kwargs") or {}).get("p", 0.0)) if kw.get("dropout_op") else 0
    )
    dec = kw.get("n_conv_per_stage_decoder", 2)
    dec = [int(dec)] * (n - 1) if isinstance(dec, int) else [int(v) for v in dec]
    model: dict[str, Any] = {
        "spatial_dims": ndim,
        "depth": n,
        "channels": features,
        "kernel_size": kernels,
        "strides": strides,
        "norm": norm,
        "act": act,
        "dropout": dropout,
        "downsample": "conv",
        "upsample": "transposed",
        "up_kernel_size": None,
        "deep_supervision": True,
        "conv_bias": bool(kw.get("conv_bias", True)),
    }
    if cls == "PlainConvUNet":
        convs = kw.get("n_conv_per_stage", 2)
        convs = [int(convs)] * n if isinstance(convs, int) else [int(v) for v in convs]
        model.update(block="plain", convs_per_stage=convs, convs_per_stage_decoder=dec)
        return model, cls
    if cls == "ResidualEncoderUNet":
        if resenc_family is None:
            raise ConfigError(
                "ResidualEncoderUNet plans need segkit's residual-encoder model family "
                "(conf/model/resenc.yaml), which this installation does not have. Fix: update "
                "segkit, or import a PlainConvUNet configuration (nnUNetPlans.json)."
            )
        blocks = kw.get("n_blocks_per_stage", 1)
        blocks = [int(blocks)] * n if isinstance(blocks, int) else [int(v) for v in blocks]
        fam = {k: v for k, v in resenc_family.items() if k not in ("_target_", "_convert_")}
        fam.update(model)
        fam["blocks_per_stage"] = blocks
        fam["convs_per_stage_decoder"] = dec
        if "blocks_per_stage_decoder" in fam:
            fam["blocks_per_stage_decoder"] = 1
        return fam, cls
    raise ConfigError(
        f"architecture {arch.get('network_class_name')!r}: segkit imports PlainConvUNet and "
        "ResidualEncoderUNet plans. Fix: choose such a plans file or use planner=auto."
    )


def import_plans(
    path: Path,
    configuration: str = "3d_fullres",
    *,
    reverse_axes: bool = True,
    resenc_family: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The segkit config of an nnU-Net plan.

    Returns:
        ``{"data": {target_spacing, patch_size, batch_size}, "model": {...},
        "network_class": str, "slice_axis": int | None, "median_shape": [...]}``,
        sizes in segkit's axis order.
    """
    plans = read_plans(path)
    # whatever a changed or foreign file holds is refused by name, never a traceback
    try:
        cfg = resolve_configuration(plans, configuration, source=str(path))
        patch = cfg.get("patch_size")
        if not patch:
            raise ConfigError(f"{path}: configuration {configuration} has no patch_size.")
        ndim = len(patch)
        order = axis_map(plans, ndim, reverse_axes=reverse_axes)
        model, cls = model_from_plans(cfg, order, resenc_family=resenc_family)
        spacing = [float(v) for v in cfg.get("spacing", [])]
        slice_axis = None
        if ndim == 2:
            slice_axis = slice_axis_of(plans, reverse_axes=reverse_axes)
            full = plans.get("original_median_spacing_after_transp") or [1.0, 1.0, 1.0]
            full_order = axis_map(plans, 3, reverse_axes=reverse_axes)
            spacing3 = [float(v) for v in _pick(full, full_order)]
            for j, a in zip(order, [a for a in range(3) if a != slice_axis]):
                spacing3[a] = spacing[j]
            target = spacing3
        else:
            target = _pick(spacing, order)
        median = cfg.get("median_image_size_in_voxels") or []
        data = {
            "target_spacing": [float(v) for v in target],
            "patch_size": [int(v) for v in _pick(patch, order)],
            "batch_size": int(cfg.get("batch_size", 2)),
        }
        sizes = [*data["target_spacing"], *data["patch_size"], data["batch_size"]]
        if not all(0 < v < float("inf") for v in sizes):
            raise ConfigError(
                f"plans={path}: configuration={configuration}: spacing {data['target_spacing']}, "
                f"patch {data['patch_size']}, batch {data['batch_size']}: each must be positive. "
                "Fix: give the plans file nnU-Net wrote (nnUNetv2_plan_and_preprocess), unchanged."
            )
        return {
            "data": data,
            "model": model,
            "network_class": cls,
            "slice_axis": slice_axis,
            "median_shape": [int(round(float(v))) for v in _pick(median, order)] if median else [],
            "plans_name": plans.get("plans_name", ""),
            "dataset_name": plans.get("dataset_name", ""),
        }
    except ConfigError as err:
        if str(path) in str(err):
            raise
        raise ConfigError(f"plans={path}: configuration={configuration}: {err}") from err
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as err:
        raise ConfigError(
            f"plans={path}: configuration={configuration} is not a plan segkit can read "
            f"({type(err).__name__}: {err}). Fix: give the plans file nnU-Net wrote "
            "(nnUNetv2_plan_and_preprocess), unchanged."
        ) from err


_RESAMPLERS = ("resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing")


def _resampling(cfg: dict[str, Any], kind: str, source: str) -> Resampling:
    name = _short(cfg.get(f"resampling_fn_{kind}"))
    if name not in _RESAMPLERS:
        raise ConfigError(
            f"{source}: resampling_fn_{kind}={name!r}; segkit reproduces nnU-Net's default "
            f"resampling {_RESAMPLERS}. Fix: a plans file with nnU-Net's default resampling."
        )
    kw = cfg.get(f"resampling_fn_{kind}_kwargs") or {}
    force = kw.get("force_separate_z")
    return Resampling(
        order=int(kw.get("order", 3 if kind == "data" else 1)),
        order_z=int(kw.get("order_z", 0)),
        force_separate_z=None if force is None else bool(force),
    )


def preprocessor_from_plans(
    plans: dict[str, Any] | Path, configuration: str = "3d_fullres"
) -> NnUNetPreprocessor:
    """nnU-Net's preprocessing of one configuration of a plans file (or its parsed dict).

    The result reproduces ``DefaultPreprocessor.run_case`` (segkit.data.nnunet_preprocess):
    its arrays stay in nnU-Net's transposed axis order, unlike segkit's RAS `Preprocessor`.

    Raises:
        ConfigError: A preprocessor, reader, resampling or normalisation segkit does not
            reproduce (named, with its plans key).
    """
    source = str(plans) if isinstance(plans, Path) else "the plans"
    if isinstance(plans, Path):
        plans = read_plans(plans)
    cfg = resolve_configuration(plans, configuration, source=source)
    name = _short(cfg.get("preprocessor_name", "DefaultPreprocessor"))
    if name != "DefaultPreprocessor":
        raise ConfigError(
            f"{source}: configuration {configuration} has preprocessor_name={name!r}; segkit "
            "reproduces nnU-Net's DefaultPreprocessor. Fix: a plans file that uses it."
        )
    missing = [k for k in ("spacing", "normalization_schemes", "use_mask_for_norm") if k not in cfg]
    if missing:
        raise ConfigError(
            f"{source}: configuration {configuration} lacks {missing}. Fix: use the plans file "
            "nnU-Net wrote (nnUNetv2_plan_and_preprocess), unedited."
        )
    schemes = tuple(_short(s) for s in cfg["normalization_schemes"])
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    return NnUNetPreprocessor(
        reader=_short(plans.get("image_reader_writer", "SimpleITKIO")),
        transpose_forward=tuple(int(a) for a in plans.get("transpose_forward", (0, 1, 2))),
        target_spacing=tuple(float(v) for v in cfg["spacing"]),
        normalization=schemes,
        use_mask_for_norm=tuple(bool(v) for v in cfg["use_mask_for_norm"]),
        intensity_properties=tuple(
            {k: float(v) for k, v in (props.get(str(c)) or {}).items()} for c in range(len(schemes))
        ),
        data_resampling=_resampling(cfg, "data", source),
        seg_resampling=_resampling(cfg, "seg", source),
        probabilities_resampling=_resampling(cfg, "probabilities", source),
    )


def result_from_plans(cfg: Any, explicit: set[str] | Sequence[str] = ()) -> PlannerResult:
    """An nnU-Net plan (``planner.plans``, ``planner.configuration``) as a planner result."""
    from omegaconf import OmegaConf

    from segkit.config import conf_dir, path_value

    planner = cfg.planner
    path = path_value("planner.plans", planner.plans)
    resenc = conf_dir() / "model" / "resenc.yaml"
    resenc_family = None
    if resenc.is_file():
        from segkit.config import compose

        resenc_family = OmegaConf.to_container(compose(["model=resenc"]).model, resolve=True)
    imported = import_plans(
        path,
        str(planner.get("configuration") or "3d_fullres"),
        reverse_axes=bool(planner.get("reverse_nnunet_axes", True)),
        resenc_family=resenc_family,
    )
    in_ch, out_ch = cfg.model.get("in_channels"), cfg.model.get("out_channels")
    beside = path.parent / "dataset.json"
    if beside.is_file():
        from segkit.data.layouts import load_dataset_json

        meta = load_dataset_json(path.parent)  # a broken one is named
        names = meta.get("channel_names") or meta.get("modality")
        labels = meta.get("labels")
        in_ch = in_ch or (len(names) if isinstance(names, dict) else None)
        out_ch = out_ch or (len(labels) if isinstance(labels, dict) else None)
    model = dict(imported["model"], in_channels=int(in_ch or 1), out_channels=int(out_ch or 2))
    data = imported["data"]
    patch = tuple(data["patch_size"])
    try:
        spec = UNetSpec.from_config(model)
        plan = plan_unet(spec, patch)
    except SegkitError as err:  # the plan's network, not the user's model config
        name = planner.get("configuration")
        raise type(err)(f"plans={path}: configuration={name}: {err}") from err
    opts = PlannerOptions.from_config(OmegaConf.to_container(planner, resolve=True))
    optim = cfg.get("optim")
    states = optimizer_state_count(
        OmegaConf.to_container(optim.optimizer, resolve=True) if optim is not None else None
    )
    memory = training_memory(
        spec, plan, data["batch_size"], optimizer_states=states, precision=opts.precision
    )
    ndim = spec.spatial_dims
    decisions = [
        f"imported {path} (configuration {planner.get('configuration')}, "
        f"{imported['network_class']}, {spec.depth} stages, {plan.params:,} parameters)",
        f"axes: nnU-Net's transposed order mapped back "
        f"({'reversed to the voxel axes' if planner.get('reverse_nnunet_axes', True) else 'kept'})",
        f"target spacing {_fmt(data['target_spacing'])} mm, patch {_axes(patch)}, "
        f"batch {data['batch_size']}: as planned by nnU-Net",
    ]
    if not beside.is_file():
        decisions.append(
            f"no dataset.json beside the plans: assuming {spec.in_channels} input channel(s) and "
            f"{spec.out_channels} classes (set model.in_channels / model.out_channels)"
        )
    axes = list(range(3)) if ndim == 3 else [a for a in range(3) if a != imported["slice_axis"]]
    spacing = [data["target_spacing"][a] for a in axes]
    decisions += explain_topology(
        spec.strides, spec.kernel_size, spacing, [f"axis {a}" for a in axes]
    )
    decisions.append(f"estimated memory {memory.breakdown()}")
    median = tuple(imported["median_shape"]) or patch
    return PlannerResult(
        target_spacing=tuple(float(v) for v in data["target_spacing"]),
        patch_size=patch,
        batch_size=int(data["batch_size"]),
        model=model,
        spec=spec,
        plan=plan,
        memory=memory,
        budget_gb=opts.memory_gb,
        median_shape=median,
        decisions=tuple(decisions),
        axis_order="nnU-Net, reversed" if planner.get("reverse_nnunet_axes", True) else "nnU-Net",
        slice_axis=imported["slice_axis"],
        explicit=tuple(sorted(set(explicit) & set(PLANNED_KEYS))),
    )


__all__ = [
    "axis_map",
    "import_plans",
    "model_from_plans",
    "preprocessor_from_plans",
    "read_plans",
    "resolve_configuration",
    "result_from_plans",
]
