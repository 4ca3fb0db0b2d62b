"""The planner's start-up hook: ``planner.auto`` plans a composed config in place.

``data=msd`` (one's own data) selects ``planner=auto``; ``data=demo`` and ``planner=none`` do not.

:func:`apply_planner` is the one call that start-up code (``train.py``, ``segkit plan``,
``segkit configure``) makes. It reads the dataset's fingerprint (computing it once, beside the
preprocessing cache), plans (:func:`~segkit.planner.search.plan_experiment`) or imports an
nnU-Net plans file (:func:`~segkit.planner.nnunet_plans.result_from_plans`), caches the
answer beside the fingerprint, and writes the planned values into the config; explicit
command-line overrides win.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from segkit.data.fingerprint import Fingerprint
from segkit.errors import ConfigError
from segkit.planner.memory import optimizer_state_count
from segkit.planner.nnunet_plans import result_from_plans
from segkit.planner.result import PLANNED_KEYS, PlannerOptions, PlannerResult
from segkit.planner.search import plan_experiment

log = logging.getLogger("segkit")


def explicit_keys(overrides: Sequence[str]) -> set[str]:
    """Keys set by command-line overrides (``key=v``, ``+key=v``, ``++key=v``)."""
    keys = set()
    for item in overrides:
        item = str(item).strip()
        if item.startswith("~") or "=" not in item:
            continue
        keys.add(item.lstrip("+").split("=", 1)[0].split("@", 1)[0])
    return keys


def _task_overrides(cfg: Any) -> list[str] | None:
    """The run's command-line overrides; None when the config does not say (composed
    without ``hydra_config`` and outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    hydra = cfg.get("hydra") if hasattr(cfg, "get") else None
    if hydra is not None and hydra.get("overrides") is not None:
        return list(hydra.overrides.get("task") or [])
    return None


def _choice(cfg: Any, group: str, default: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    try:
        if HydraConfig.initialized():
            return str(HydraConfig.get().runtime.choices.get(group) or default)
        hydra = cfg.get("hydra")
        if hydra is not None:
            return str(hydra.runtime.choices.get(group) or default)
    except Exception:  # noqa: BLE001 - only a label for messages
        pass
    return default


def _fingerprint_for(cfg: Any) -> Fingerprint:
    from pathlib import Path

    from omegaconf import OmegaConf

    from segkit.config import path_value
    from segkit.data.fingerprint import load_dataset_fingerprint, read_fingerprint

    planner = cfg.planner
    if planner.get("fingerprint"):
        return read_fingerprint(
            path_value("planner.fingerprint", planner.fingerprint),
            reverse_nnunet_axes=bool(planner.get("reverse_nnunet_axes", True)),
        )
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError(
            "planner: data.root is not set. Fix: data.root=/path/to/dataset, or "
            "planner.fingerprint=/path/to/dataset_fingerprint.json, or planner=none (the "
            "configured patch and network, unplanned)"
        )
    root = path_value("data.root", cfg.data.root)
    demo = cfg.data.get("make_demo_if_missing")
    if (
        demo
        and not (root / "dataset.json").is_file()
        and (demo is True or Path(str(demo)).resolve() == root.resolve())
    ):
        from segkit.data.demo import make_demo

        make_demo(root)
    cache_dir = cfg.data.get("cache_dir")
    return load_dataset_fingerprint(
        root,
        cache_dir=Path(cache_dir) if cache_dir else None,
        num_workers=int(cfg.data.get("num_workers", 1) or 1),
    )


def plan_from_config(cfg: Any, explicit: set[str] | Sequence[str] = ()) -> PlannerResult:
    """Plans for a composed config: its dataset (or ``planner.fingerprint``), model family,
    optimizer and ``planner.*`` settings; ``explicit`` keys keep their configured values.

    ``planner.plans`` imports an nnU-Net plans file instead
    (:func:`~segkit.planner.nnunet_plans.result_from_plans`).
    """
    from omegaconf import OmegaConf

    explicit = set(explicit)
    if cfg.planner.get("plans"):
        return result_from_plans(cfg, explicit)
    opts = PlannerOptions.from_config(OmegaConf.to_container(cfg.planner, resolve=True))
    family = OmegaConf.to_container(cfg.model, resolve=True)
    fixed = {}
    for key in PLANNED_KEYS:
        if key in explicit:
            group, name = key.split(".")
            value = OmegaConf.select(cfg, key)
            fixed[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    optim = cfg.get("optim")
    states = optimizer_state_count(
        OmegaConf.to_container(optim.optimizer, resolve=True) if optim is not None else None
    )
    return plan_experiment(
        _fingerprint_for(cfg),
        family,
        opts,
        fixed=fixed,
        optimizer_states=states,
        family_name=_choice(cfg, "model", "unet"),
    )


def apply_planner(cfg: Any, overrides: Sequence[str] | None = None, *, record: bool = True) -> Any:
    """With ``planner.auto``, plans and writes the planned values into ``cfg`` (in place).

    Explicit command-line overrides of :data:`PLANNED_KEYS` win: ``overrides`` is the list of
    overrides (default: Hydra's task overrides of this run). With ``record``, the decisions
    and resolved values go to ``<paths.output_dir>/planner.json`` and ``planner.txt``.

    Returns:
        ``cfg`` (unchanged when the planner is off).
    """
    from omegaconf import OmegaConf, open_dict

    planner = cfg.get("planner") if hasattr(cfg, "get") else None
    if not planner or not planner.get("auto"):
        return cfg
    if overrides is None:
        overrides = _task_overrides(cfg)
        if overrides is None:
            # e.g. train(compose([...])) from Python: a given data.patch_size would be re-planned
            log.warning(
                "planner: the command-line overrides of this config are unknown, so every "
                "planned key is planned. Fix: compose(overrides, hydra_config=True), "
                "apply_planner(cfg, overrides), or planner=none"
            )
            overrides = []
    explicit = explicit_keys(overrides)
    cache = _answer_path(cfg, explicit)
    answer = _read_answer(cache)
    if answer is None:
        result = plan_from_config(cfg, explicit)
        answer = dict(result.to_json(), model=result.model)
        cache = cache or _answer_path(cfg, explicit)  # the fingerprint exists now
        if cache is not None:
            from segkit.fsio import save_json_atomic

            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                save_json_atomic(cache, answer)
            except OSError as err:  # a cache is kept where it can be; planning goes on
                log.warning("planner: the decisions are not cached (%s)", err)
    with open_dict(cfg):
        for key in ("target_spacing", "patch_size", "batch_size"):
            if f"data.{key}" not in explicit:
                cfg.data[key] = answer[f"data.{key}"]
        for key, value in answer["model"].items():
            if key in ("in_channels", "out_channels") or f"model.{key}" in explicit:
                continue
            cfg.model[key] = value
    for line in answer["decisions"]:
        log.info("planner: %s", line)
    for line in answer["warnings"]:
        log.warning("planner: %s", line)
    if record and cfg.get("paths") is not None and OmegaConf.select(cfg, "paths.output_dir"):
        from pathlib import Path

        from segkit.fsio import save_json_atomic

        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_json_atomic(out / "planner.json", {k: v for k, v in answer.items() if k != "model"})
        (out / "planner.txt").write_text("\n".join(answer["decisions"]) + "\n")
    return cfg


def _answer_path(cfg: Any, explicit: set[str]) -> Any:
    """Where the planner's answer for this config is cached: beside the dataset's fingerprint,
    keyed by the fingerprint, the model family, the planner and optimizer settings, the
    explicit values and segkit's own source (so a changed rule or block re-plans)."""
    import hashlib
    import json
    from pathlib import Path

    from omegaconf import OmegaConf

    from segkit.data.fingerprint import fingerprint_path
    from segkit.data.layouts import read_dataset

    planner = cfg.planner
    if planner.get("fingerprint") or planner.get("plans") or OmegaConf.is_missing(cfg.data, "root"):
        return None
    root = Path(cfg.data.root)
    if not (root / "dataset.json").is_file():
        return None
    cache_dir = cfg.data.get("cache_dir")
    fp_file = fingerprint_path(read_dataset(root), Path(cache_dir) if cache_dir else None)
    if not fp_file.is_file():
        return None
    package = Path(__file__).resolve().parents[1]
    source = hashlib.sha256()
    for f in sorted(
        f for pattern in ("*.py", "planner/*.py", "nn/*.py") for f in package.glob(pattern)
    ):
        source.update(f.read_bytes())
    key = {
        "fingerprint": fp_file.name,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "planner": OmegaConf.to_container(planner, resolve=True),
        "optim": OmegaConf.to_container(cfg.optim, resolve=True) if cfg.get("optim") else None,
        "explicit": {k: OmegaConf.select(cfg, k) for k in sorted(explicit & set(PLANNED_KEYS))},
        "source": source.hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return fp_file.parent / "plans" / f"planner-{digest[:16]}.json"


def _read_answer(path: Any) -> dict[str, Any] | None:
    """The planner's saved answer; None (planned again) for none, or one that is damaged."""
    from segkit.fsio import read_json

    if path is None or not path.is_file():
        return None
    try:
        answer = read_json(path)
    except (OSError, ValueError):
        return None
    keys = ("data.target_spacing", "data.patch_size", "data.batch_size")
    valid = (
        isinstance(answer, dict)
        and isinstance(answer.get("model"), dict)
        and all(isinstance(answer.get(k), list) for k in ("decisions", "warnings"))
        and all(isinstance(line, str) for k in ("decisions", "warnings") for line in answer[k])
        and all(isinstance(answer.get(k), list | int) for k in keys)
    )
    if not valid:
        return None
    from segkit.errors import SegkitError
    from segkit.spec import UNetSpec

    try:  # the values a damaged file holds: the same checks as a config's
        UNetSpec.from_config(answer["model"])
        sizes = [*answer["data.target_spacing"], *answer["data.patch_size"]]
        if not all(isinstance(v, int | float) and 0 < v < float("inf") for v in sizes):
            return None
    except (SegkitError, TypeError):
        return None
    return answer


__all__ = ["apply_planner", "explicit_keys", "plan_from_config"]
