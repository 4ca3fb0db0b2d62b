"""``train(cfg)``: everything ``python train.py`` does, callable from tests and sweeps."""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from segkit.config import check_data_choice, composition, plan_network
from segkit.defaults import (
    CALIBRATION_OVERLAPS,
    CALIBRATION_TOLERANCE,
    CALIBRATION_WINDOW_SCALES,
    DEFAULT_OVERLAP,
    SLICE_AXIS,
)
from segkit.errors import ConfigError, DiskFullError, SegkitError, interpolation_error, refuse
from segkit.fsio import disk_full, is_disk_full, save_json_atomic, write_text_atomic
from segkit.inference.engine.outputs import OutputHead
from segkit.plan import Plan
from segkit.spec import UNetSpec

log = logging.getLogger("segkit")


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def training_callbacks(cfg: DictConfig) -> list[Any]:
    """The ``callbacks`` group's callbacks; with ``trainer.enable_progress_bar=false`` without
    the progress bar (Lightning refuses a progress-bar callback with the bar disabled)."""
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if (cfg.get("trainer") or {}).get("enable_progress_bar", True) is False:
        from pytorch_lightning.callbacks.progress import ProgressBar

        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def prepare(cfg: DictConfig) -> tuple[Any, UNetSpec, Plan, Any]:
    """Everything that can fail on a user's mistake, before any training starts.

    Returns:
        ``(datamodule, spec, plan, dataset_info)``.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from segkit.data import SegDataModule
    from segkit.planner import apply_planner
    from segkit.training.module import build_optimizer

    # planner=auto (data=msd's default): plans patch, batch, spacing, stages (overrides win)
    apply_planner(cfg)
    check_data_choice(cfg)
    try:
        dm = instantiate(cfg.data)
    except InstantiationException as exc:  # Hydra wraps the data module's own refusal
        if isinstance(exc.__cause__, SegkitError):
            raise exc.__cause__ from None
        raise
    if not isinstance(dm, SegDataModule):
        raise ConfigError(f"data: expected a segkit.data.SegDataModule, got {type(dm).__name__}")
    info = dm.dataset_info()
    # a region dataset's network has one sigmoid output per region
    spec, plan = plan_network(cfg, num_channels=info.num_channels, num_classes=info.num_outputs)
    outputs = info.describe_outputs()
    if outputs:
        plan = replace(plan, title=f"{plan.title}{outputs}\n")
    # an optimizer the config cannot build fails here, not after preprocessing
    build_optimizer(
        OmegaConf.to_container(cfg.optim.optimizer, resolve=True),
        [torch.nn.Parameter(torch.zeros(1))],
    )
    _check_values(cfg)
    return dm, spec, plan, info


def _check_values(cfg: DictConfig) -> None:
    """Values Lightning, the loss or validation would only trip over mid-run
    (``max_epochs=abc``, ``val_mode=fast``)."""
    expected = {"seed": int, "trainer.max_epochs": int, "trainer.max_steps": int}
    expected.update({f"loss.{k}": float for k in ("dice_weight", "ce_weight", "smooth")})
    expected["loss.ds_weight_decay"] = float
    for key, kind in expected.items():
        value = OmegaConf.select(cfg, key, default=None)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (number and (kind is float or isinstance(value, int))):
            example = "10" if kind is int else "1.0"
            raise ConfigError(f"{key}={value!r}: expected a number. Fix: {key}={example}")
    from segkit.inference.engine.settings import InferenceSettings

    mode, overlap = cfg.get("val_mode", "auto"), cfg.get("val_overlap", DEFAULT_OVERLAP)
    try:  # validation runs them only after the first epoch
        InferenceSettings(mode=mode, overlap=float(overlap))
    except (SegkitError, TypeError, ValueError) as err:
        raise ConfigError(f"val_mode={mode!r}, val_overlap={overlap!r}: {err}") from None


def _resume_path(cfg: DictConfig, out_dir: Path) -> str | None:
    """The checkpoint to resume from, checked to hold only tensors and plain values."""
    from segkit.inference.predict.checkpoint import read_checkpoint

    path = None
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    elif cfg.get("resume"):
        last = out_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            log.warning("resume=true but %s does not exist: starting from scratch", last)
            return None
        path = last
    if path is None:
        return None
    read_checkpoint(path)  # weights_only: refuses pickled objects before Lightning opens it
    return str(path)


def train(cfg: DictConfig) -> tuple[float | None, dict[str, Any]]:
    """Train as configured; returns the optimised metric and the run's metrics dict."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from segkit.training.module import SegModule

    start = time.time()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_values(cfg)
    pl.seed_everything(cfg.seed, workers=True)

    dm, spec, plan, info = prepare(cfg)
    log.info("%s", composition(cfg))
    write_text_atomic(out_dir / "plan.txt", plan.table() + "\n")
    if cfg.get("print_plan", True):
        print(plan.table(), flush=True)
    ckpt_path = _resume_path(cfg, out_dir)

    dm.prepare_data()
    try:  # a network too large for the memory fails to allocate here
        module = SegModule(
            model=spec.to_dict(),
            optim=OmegaConf.to_container(cfg.optim, resolve=True),
            loss=OmegaConf.to_container(cfg.loss, resolve=True),
            patch_size=[int(v) for v in cfg.data.patch_size],
            label_names={int(k): v for k, v in info.label_names.items()},
            val_mode=cfg.get("val_mode", "auto"),
            val_overlap=float(cfg.get("val_overlap", DEFAULT_OVERLAP)),
            preprocessor=dm.preprocessor.to_dict(),
            compile=bool(cfg.get("compile", False)),
            channels_last=bool(cfg.get("channels_last", False)),
            slice_axis=int(getattr(dm, "slice_axis", SLICE_AXIS)),
            ignore_label=info.ignore_label,
            regions=[r.to_dict() for r in info.regions] or None,
            output_head=(
                OutputHead.regions(info.regions_class_order).to_dict() if info.regions else None
            ),
        )
    except (RuntimeError, MemoryError) as err:
        if isinstance(err, RuntimeError) and "allocate" not in str(err):
            raise
        raise ConfigError(
            f"the network ({plan.params:,} parameters) cannot be built in memory "
            f"({' '.join(str(err).split())[:200]}). Fix: a smaller model.kernel_size or "
            "fewer model.channels (segkit plan shows every layer's size)"
        ) from None
    init_cfg = cfg.get("init") or {}
    init_from, frozen = init_cfg.get("from_checkpoint"), init_cfg.get("freeze")
    if init_from or frozen not in (None, "none"):
        from segkit.training.upkern import freeze, map_checkpoint

        if init_from and ckpt_path is None:
            report = map_checkpoint(module.net, init_from)
            log.info("init.from_checkpoint=%s: %s", init_from, report.summary())
            log.info("init.from_checkpoint, every tensor:\n%s", report.listing())
        if frozen not in (None, "none"):
            if not init_from:
                raise ConfigError(
                    f"init.freeze={frozen} without init.from_checkpoint would freeze a random "
                    "initialisation. Fix: add init.from_checkpoint=PATH, or init.freeze=null."
                )
            log.info("init.freeze=%s: %s", frozen, freeze(module.net, frozen))
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=training_callbacks(cfg),
        logger=_instantiate_all(cfg.get("logger")) or False,
        **_checkpoint_io(cfg),
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    calibration = _calibrate_checkpoints(cfg, trainer, module, dm)

    history = module.val_history
    best = max(history, key=lambda h: h["dice_mean"]) if history else None
    final = history[-1] if history else None
    metrics: dict[str, Any] = {
        "status": "ok",
        "optimized_metric": cfg.get("optimized_metric"),
        "dice_mean_best": best["dice_mean"] if best else None,
        "dice_best": best["dice"] if best else None,
        "epoch_best": best["epoch"] if best else None,
        "dice_mean_final": final["dice_mean"] if final else None,
        "dice_final": final["dice"] if final else None,
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "params": plan.params,
        "gflops_per_patch": round(2 * plan.macs / 1e9, 3),
        "receptive_field": list(plan.receptive_field),
        "patch_size": list(plan.input_size),
        "estimated_activation_mib": round(plan.activation_bytes / 2**20, 1),
        "peak_memory_mib": _peak_memory_mib(),
        "wall_time_s": round(time.time() - start, 1),
        "device": _device_name(trainer),
        "val_history": history,
    }
    best_ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "")
    metrics["best_checkpoint"] = best_ckpt or None
    metrics["validation_inference"] = module.inference_settings.describe()
    metrics["validation_cases"] = [
        case for case, _, _ in _validation_cases(trainer, dm, load=False)
    ]
    metrics["data_root"] = str(Path(dm.root).resolve())
    metrics["inference"] = calibration
    if trainer.is_global_zero:
        save_json_atomic(out_dir / "metrics.json", metrics)
    value = _optimized_value(cfg.get("optimized_metric"), metrics, trainer)
    log.info(
        "mean foreground Dice (validation, %s): best %s, final %s",
        metrics["validation_inference"],
        value,
        metrics["dice_mean_final"],
    )
    return value, metrics


def _checkpoint_io(cfg: DictConfig) -> dict[str, Any]:
    """Checkpoints written atomically beside their name (``trainer.plugins`` given: those)."""
    from segkit.training.checkpoint_io import AtomicCheckpointIO

    return {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}


def _validation_cases(trainer: Any, dm: Any, *, load: bool = True):
    """``(case id, image, label)`` of the validation fold, as many as validation used
    (only the ids, with None for the arrays, when ``load`` is false)."""
    ids = list(dm.val_ids)
    limit = trainer.limit_val_batches
    if isinstance(limit, int):
        ids = ids[:limit]
    elif isinstance(limit, float) and limit < 1:
        ids = ids[: math.ceil(limit * len(ids))]
    if not load:
        yield from ((case, None, None) for case in ids)
        return
    for _, batch in zip(ids, dm.val_dataloader()):
        yield str(batch["case"][0]), batch["image"], batch["label"][0, 0]


def _calibrate_checkpoints(cfg: DictConfig, trainer: Any, module: Any, dm: Any) -> dict | None:
    """Measure sliding-window settings on the validation fold for best.ckpt and last.ckpt,
    and store the cheapest one within tolerance of the best in each checkpoint."""
    from segkit.inference.calibrate import calibrate
    from segkit.inference.predict.checkpoint import (
        CALIBRATION_KEY,
        network_weights,
        read_checkpoint,
    )
    from segkit.nn import UNet
    from segkit.training.checkpoint_io import save_torch_atomic

    opts = cfg.get("calibrate_inference") or {}
    if not opts.get("enabled", True) or trainer.fast_dev_run or not trainer.is_global_zero:
        return None
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    paths = [p for p in (folder / "best.ckpt", folder / "last.ckpt") if p.is_file()]
    if not paths or not dm.val_ids:
        return None
    device = module.device
    result: dict | None = None
    measured: dict[tuple, Any] = {}
    for path in paths:
        ckpt = read_checkpoint(path)
        when = (ckpt.get("epoch"), ckpt.get("global_step"))
        found = measured.get(when)  # best.ckpt saved at the last step: the same weights
        if found is None:
            net = UNet(module.spec).to(device)
            net.load_state_dict(network_weights(ckpt["state_dict"]))
            cases = (
                (case, image.to(device), label.to(device))
                for case, image, label in _validation_cases(trainer, dm)
            )
            found = measured[when] = calibrate(
                net.eval(),
                cases,
                module.score_case,
                head=module.head,
                patch_size=module.hparams.patch_size,
                slice_axis=module.hparams.slice_axis,
                overlaps=list(opts.get("overlaps", CALIBRATION_OVERLAPS)),
                window_scales=list(opts.get("window_scales", CALIBRATION_WINDOW_SCALES)),
                tolerance=float(opts.get("tolerance", CALIBRATION_TOLERANCE)),
            )
            print(f"\ninference settings measured on the validation fold ({path.name}):")
            print(found.table(), flush=True)
        else:
            print(f"\n{path.name} holds the same weights: the same setting is stored in it")
        ckpt[CALIBRATION_KEY] = found.to_dict()
        save_torch_atomic(path, ckpt)

        if path.name == "best.ckpt" or result is None:
            result = {**found.to_dict(), "checkpoint": path.name}
    return result


def _optimized_value(name: str | None, metrics: dict[str, Any], trainer: Any) -> float | None:
    """What ``train()`` returns: the best mean Dice, or the last value of another metric.

    ``segkit search`` does not use it: its trials report ``optimized_metric`` per epoch
    (``segkit.sweeps.pruning``).
    """
    if name in (None, "val/dice_mean"):
        return metrics["dice_mean_best"]
    value = trainer.callback_metrics.get(name)
    if value is None:
        raise ConfigError(
            f"optimized_metric={name} was never logged; logged metrics: "
            f"{', '.join(sorted(trainer.callback_metrics))}"
        )
    return float(value)


def _peak_memory_mib() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss_kib / 1024, 1)


def _device_name(trainer: Any) -> str:
    if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda":
        return torch.cuda.get_device_name(trainer.strategy.root_device)
    return f"cpu ({os.cpu_count()} cores)"


def main(cfg: DictConfig) -> float | None:
    """Entry point of ``train.py``: user mistakes print one clear line and exit 2.

    In a multirun (sweep) a mistake specific to one combination (say, a depth the
    patch cannot hold) is recorded as skipped in that job's ``metrics.json`` and
    the sweep goes on.
    """
    try:
        try:
            value, _ = train(cfg)
        except OSError as err:  # a log or a library's file: the run directory is named
            if not is_disk_full(err):
                raise
            raise disk_full(err.filename or cfg.paths.output_dir, err).resumed_by(RESUME) from err
        except DiskFullError as err:
            raise err.resumed_by(RESUME) from err
        # a multirun's sweeper gets None ("no value") for a nan; segkit search reads a trial's
        # values from its study, not from this return
        return None if value is None or math.isnan(value) else value
    except (SegkitError, InterpolationResolutionError) as exc:
        if isinstance(exc, InterpolationResolutionError):  # an override's ${...}
            exc = interpolation_error(exc, cfg)
        # a full disk stops a sweep too: its other jobs would find it full
        if _is_multirun() and not isinstance(exc, DiskFullError):
            out_dir = Path(cfg.paths.output_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            save_json_atomic(out_dir / "metrics.json", {"status": "skipped", "reason": str(exc)})
            log.error("skipped: %s", exc)
            return None
        sys.exit(refuse("train.py", exc))


RESUME = (
    "run the same command again with resume=true (and the same run directory): it goes on "
    "from checkpoints/last.ckpt"
)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


__all__ = ["main", "prepare", "train"]
