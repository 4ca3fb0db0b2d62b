"""The sweep a multirun would run: command-line sweeps plus ``hydra.sweeper.params``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SweepOverrides:
    """Overrides to expand into jobs, and search-space entries that cannot be enumerated.

    Attributes:
        overrides: Fixed overrides and enumerable sweeps (``model.depth=3,4,5``,
            ``choice(3,5)``, ``range(3,6)``), command-line entries last.
        sampled: ``key=interval(...)`` entries a sampler draws from (Optuna); they
            cannot be listed combination by combination.
        fixed: The command line without its sweeps (composable as one config).
        launcher: The ``hydra/launcher`` choice (``basic``, ``joblib``, ``submitit_slurm``).
        batch_size: Jobs the sweeper launches at once, or a search preset's ``search.workers``
            (None: all of them).
    """

    overrides: tuple[str, ...]
    sampled: tuple[str, ...]
    fixed: tuple[str, ...] = ()
    launcher: str = "basic"
    batch_size: int | None = None


def sweep_overrides(overrides: Sequence[str]) -> SweepOverrides:
    """Merge ``hydra.sweeper.params`` of the composed config (a ``+sweep=...`` or
    ``hparams_search=...`` preset) with the command line, as Hydra's sweepers do.

    A key given on the command line replaces the preset's entry for that key.

    Raises:
        ConfigError: The overrides do not compose or do not parse.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from segkit.config import compose
    from segkit.errors import ConfigError

    parser = OverridesParser.create()
    try:
        cli = parser.parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"overrides: {exc}") from None
    # the preset is composed without the command-line sweeps (they cannot compose)
    fixed = tuple(o.input_line for o in cli if not o.is_sweep_override())
    cfg = compose(fixed, hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    given = {o.get_key_element() for o in cli}
    preset = [f"{k}={v}" for k, v in params.items() if k not in given]
    try:
        parsed = parser.parse_overrides(preset)
    except HydraException as exc:
        raise ConfigError(f"hydra.sweeper.params: {exc}") from None
    keep = [o.input_line for o in parsed if not o.is_interval_sweep()]
    sampled = tuple(o.input_line for o in parsed if o.is_interval_sweep())
    # a search preset (segkit search) runs search.workers trials at once
    search = cfg.get("search") or {}
    batch = search.get("workers") if search else cfg.hydra.sweeper.get("max_batch_size")
    return SweepOverrides(
        overrides=(*keep, *(o.input_line for o in cli)),
        sampled=sampled,
        fixed=fixed,
        launcher=str(cfg.hydra.runtime.choices.get("hydra/launcher")),
        batch_size=batch,
    )
