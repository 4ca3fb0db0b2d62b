"""Composing segkit's Hydra configs outside ``@hydra.main`` (CLI, tests)."""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from segkit.errors import ConfigError

if TYPE_CHECKING:
    from segkit.plan import Plan
    from segkit.spec import UNetSpec


def conf_dir() -> Path:
    """The ``conf/`` directory: ``$SEGKIT_CONF``, ``./conf``, or the repo's beside the package."""
    candidates = [
        os.environ.get("SEGKIT_CONF"),
        Path.cwd() / "conf",
        Path(__file__).resolve().parents[1] / "conf",
    ]
    for c in candidates:
        if c and (Path(c) / "train.yaml").is_file():
            return Path(c).resolve()
    raise ConfigError(
        "cannot find segkit's conf/ directory (looked in $SEGKIT_CONF, ./conf and beside the "
        "package); run from the repository root or set SEGKIT_CONF=/path/to/segkit/conf"
    )


def compose(
    overrides: Sequence[str] = (), *, config_name: str = "train", hydra_config: bool = False
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style overrides.

    Hydra's own errors (unknown group option, bad override syntax) become a
    :class:`ConfigError` with Hydra's message.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(
                config_name=config_name,
                overrides=list(overrides),
                return_hydra_config=hydra_config,
            )
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as exc:
        # TypeError: Hydra's own, for a group given a list of numbers (+experiment=[1,2])
        raise _config_error(str(exc), overrides, config_name) from None


def _config_error(text: str, overrides: Sequence[str], config_name: str) -> ConfigError:
    """Hydra's multi-line composition error as one line naming the override, what is
    allowed and a fix that works when pasted."""
    unknown = re.search(r"Could not override '([^']+)'", text)
    key = unknown.group(1) if unknown else ""
    others = [o for o in overrides if _key_of(o) != key]
    # Only a key from the command line is left out to compose what is there; one that a
    # config's defaults list names would fail the same way again (Hydra's text names it).
    if unknown and len(others) < len(overrides):
        try:
            cfg = compose(others, config_name=config_name, hydra_config=True)
        except ConfigError:
            cfg = None
        parent, node = key, None
        while cfg is not None and parent and not isinstance(node, DictConfig):
            parent = parent.rpartition(".")[0]
            node = OmegaConf.select(cfg, parent) if parent else cfg
        names = [str(k) for k in node if not str(k).startswith("_")] if node else []
        known = f"; {parent or 'the config'} has: {', '.join(names)}" if names else ""
        value = next(o for o in overrides if _key_of(o) == key).partition("=")[2]
        close = difflib.get_close_matches(key.rpartition(".")[2], names, n=1)
        new = f"+{key}={value}"
        if close:
            near = f"{parent}.{close[0]}" if parent else close[0]
            fix = f"{_pasteable(f'{near}={value}')} (or {_pasteable(new)} to add a new key)"
        else:
            fix = f"correct the key, or add a new one with {_pasteable(new)}"
        return ConfigError(f"config: unknown key {key!r}{known}. Fix: {fix}")
    missing = re.search(r"Could not find '([^']+)/([^']*)'", text)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)\s*$", text, flags=re.M)
        given = next((o for o in overrides if _key_of(o) == group), group)
        close = difflib.get_close_matches(option, options, n=1) or options[:1]
        fix = f" Fix: {_option_fix(given, close[0], overrides, config_name)}" if close else ""
        return ConfigError(
            f"config: {group}={option}: no such option; options: "
            f"{', '.join(options) or '(none)'} (files in conf/{group}/).{fix}"
        )
    bad = _unparsable(overrides, config_name) or _not_an_option(overrides, config_name)
    if bad is not None:
        return bad
    sweep = re.search(r"Ambiguous value for argument '([^']+)'", text)
    if sweep:
        k, _, v = sweep.group(1).partition("=")
        return ConfigError(
            f"config: {sweep.group(1)!r} lists several values. Fix: {_pasteable(f'{k}=[{v}]')} "
            f"""for a list, "{k}='{v}'" for the text, or add -m to sweep over them"""
        )
    deleted = re.search(r"Could not delete from config. '([^']+)' does not exist", text)
    if deleted:
        k = deleted.group(1)
        return ConfigError(f"config: ~{k}: there is no key {k} to delete. Fix: drop '~{k}'")
    text = text.split("Config search path")[0]
    return ConfigError(
        "config: " + " ".join(line.strip() for line in text.splitlines() if line.strip())
    )


def _option_fix(given: str, option: str, overrides: Sequence[str], config_name: str) -> str:
    """``given`` (``+experiment=nope``) with ``option`` in its place, as it composes: its
    ``+`` kept or dropped (a group of the defaults list takes no ``+``)."""
    group = _key_of(given)
    others = [o for o in overrides if o != given]
    prefix = given[: len(given) - len(given.lstrip("+~"))]
    for fix in (f"{prefix}{group}={option}", f"{group}={option}", f"+{group}={option}"):
        try:
            compose([*others, fix], config_name=config_name)
        except ConfigError:
            continue
        return fix
    return f"{group}={option}"


def _not_an_option(overrides: Sequence[str], config_name: str) -> ConfigError | None:
    """The first override of a config group whose value names no option of it
    (``launcher=1e308``, ``+experiment=[1,2]``: Hydra says only "must be a string")."""
    root = conf_dir()
    for override in overrides:
        group, _, value = override.lstrip("+~").partition("=")
        options = sorted(p.stem for p in (root / group).glob("*.yaml")) if group else []
        names = [v.strip() for v in value.strip("[]").split(",")]
        wrong = [v for v in names if v not in options]
        if options and wrong:
            close = difflib.get_close_matches(wrong[0], options, n=1) or options[:1]
            fix = _option_fix(override, close[0], overrides, config_name)
            return ConfigError(
                f"config: {group}={value}: no such option {wrong[0]!r}; options: "
                f"{', '.join(options)} (files in conf/{group}/). Fix: {fix}"
            )
    return None


def _key_of(override: str) -> str:
    """The config key (or group) an override sets: ``+model.depth=3`` → ``model.depth``."""
    return override.partition("=")[0].lstrip("+~").partition("@")[0]


def _pasteable(override: str) -> str:
    """An override as a shell word (quoted where the shell would change it)."""
    import shlex

    return shlex.quote(override)


def _parses(override: str) -> str | None:
    """Hydra's reason for refusing to parse ``override``; None when it parses."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides([override])
    except Exception as exc:  # noqa: BLE001 - the parser's errors are its message
        return " ".join(str(exc).split("See https://")[0].split())
    return None


def _unparsable(overrides: Sequence[str], config_name: str) -> ConfigError | None:
    """The first override Hydra's parser refuses, with a repaired one that parses (a key
    without a value: the key with its value now)."""
    for override in overrides:
        reason = _parses(override)
        if not _key_of(override) and "=" in override or override.strip("+~@") == "":
            reason = reason or "no key before '='"
        if reason is None:
            continue
        key, eq, value = override.partition("=")
        candidates = [
            f"{key}={value}]" if value.startswith("[") else "",
            f"{key}={value}}}" if value.startswith("{") else "",
            f"{re.sub(r'[.]{2,}', '.', key)}={value}" if ".." in key else "",
            f"{key}='{value}'" if eq and "'" not in value else "",
        ]
        if not eq and _key_of(override) and _parses(f"{_key_of(override)}=1") is None:
            others = [o for o in overrides if o != override]
            now = OmegaConf.select(compose(others, config_name=config_name), _key_of(override))
            if now is not None and not isinstance(now, DictConfig):
                plain = OmegaConf.to_container(now) if OmegaConf.is_config(now) else now
                text = plain if isinstance(plain, str) else json.dumps(plain).replace(" ", "")
                candidates.insert(0, f"{_key_of(override)}={text}")
        repaired = next((c for c in candidates if c and _key_of(c) and _parses(c) is None), None)
        if repaired:
            fix = f"Fix: {_pasteable(repaired)}"
        elif not _key_of(override):
            fix = f"Fix: drop {override!r}, or write KEY{eq}{value} with a key of conf/train.yaml"
        else:
            fix = f"Fix: write KEY=VALUE, e.g. {_key_of(override)}=..., or drop {override!r}"
        return ConfigError(f"config: {override!r} is not a Hydra override ({reason}). {fix}")
    return None


def check_command_line(argv: Sequence[str]) -> None:
    """Composes ``python train.py ARGV`` as Hydra will, before Hydra does: an override it
    cannot take (an unknown key, a missing group option, bad grammar) is one
    :class:`ConfigError` naming it and a fix, where Hydra prints several lines and exits 1.

    With ``-m`` every value of every swept key is composed once (the others at their
    first value). Flags that read another config or print Hydra's help are Hydra's.

    Raises:
        ConfigError: an argument or override ``python train.py`` cannot take.
    """
    import argparse

    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        args, extra = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as exc:
        raise ConfigError(f"{exc}. Fix: see python train.py --help") from None
    if extra:
        raise ConfigError(
            f"unrecognized argument(s) {' '.join(extra)}: train.py takes KEY=VALUE overrides "
            "and Hydra's flags (python train.py --help). Fix: drop them"
        )
    own_config = (args.config_path, args.config_name, args.config_dir, args.experimental_rerun)
    shows = (args.help, args.hydra_help, args.shell_completion, args.info)
    if any(own_config) or any(shows):
        return
    for combo in _sweep_samples(args.overrides) if args.multirun else [args.overrides]:
        compose(combo, hydra_config=True)


def _sweep_samples(overrides: Sequence[str]) -> list[list[str]]:
    """Override lists that between them hold every value of every discrete sweep (the
    first combination, then one value changed at a time); a continuous sweep is left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise _config_error(str(exc), overrides, "train") from None
    axes = []
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            axes.append([o.input_line])
        elif o.is_discrete_sweep():
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
    first = [values[0] for values in axes if values]
    samples = [first]
    for i, values in enumerate(axes):
        samples += [[*first[:i], v, *first[i + 1 :]] for v in values[1:]]
    return samples


def path_value(key: str, value: Any) -> Path:
    """A config value naming a file or folder (``data.root``, ``planner.plans``) as a Path;
    a number or a list there is refused by its key."""
    if isinstance(value, str | Path) and str(value):
        return Path(value)
    raise ConfigError(f"{key}={value!r}: expected a path. Fix: {key}=/path/to/it")


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Cartesian product of sweep overrides (``model.depth=3,4,5``) as plain override lists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"overrides: {exc}") from None
    axes: list[list[str]] = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def model_config(
    cfg: DictConfig, *, num_channels: int | None = None, num_classes: int | None = None
) -> dict[str, Any]:
    """The ``model`` group as a plain dict with in/out channels filled from the data.

    Raises:
        ConfigError: ``model.in_channels``/``out_channels`` disagree with the dataset.
    """
    model = OmegaConf.to_container(cfg.model, resolve=True)
    for key, value, what in (
        ("in_channels", num_channels, "channels (dataset.json channel_names/modality)"),
        ("out_channels", num_classes, "classes incl. background (dataset.json labels)"),
    ):
        if model.get(key) is None:
            model[key] = value if value is not None else (1 if key == "in_channels" else 2)
        elif value is not None and model[key] != value:
            raise ConfigError(
                f"model.{key}={model[key]} but the dataset has {value} {what}; remove the "
                f"override (segkit reads it from dataset.json) or set model.{key}={value}"
            )
    return model


def describe_network(spec: UNetSpec, patch_size: Sequence[int]) -> str:
    """One line: ``3D U-Net, depth 4, block plain, conv/transposed, patch 37×45×29``."""
    return (
        f"{spec.spatial_dims}D U-Net, depth {spec.depth}, block {spec.block}, "
        f"{spec.downsample}/{spec.upsample}, patch {'×'.join(map(str, patch_size))}"
    )


def plan_network(
    cfg: DictConfig,
    *,
    num_channels: int | None = None,
    num_classes: int | None = None,
    heading: str = "",
) -> tuple[UNetSpec, Plan]:
    """Config → spec → plan: ``cfg.model``'s network solved for ``cfg.data.patch_size``.

    The one path from a composed config to a plan, for ``segkit plan`` and for
    ``train()`` (run the planner, ``apply_planner``, first when ``planner=auto``).

    Args:
        cfg: The composed config.
        num_channels: Input channels of the dataset (None: ``model.in_channels`` or 1).
        num_classes: Classes incl. background (None: ``model.out_channels`` or 2).
        heading: Put before the network's one-line description in the plan's title.

    Raises:
        ConfigError: The model config is invalid or disagrees with the dataset.
        ShapeError: The patch size is infeasible for the network.
    """
    from segkit.nn import plan_unet
    from segkit.spec import UNetSpec

    spec = UNetSpec.from_config(
        model_config(cfg, num_channels=num_channels, num_classes=num_classes)
    )
    patch = [int(v) for v in cfg.data.patch_size]
    title = f"{composition(cfg)}\n{heading}{describe_network(spec, patch)}\n"
    return spec, plan_unet(spec, patch, title=title)


def group_choices(cfg: DictConfig) -> dict[str, str]:
    """The config group options in effect (``data``, ``model``, ``experiment``, ...).

    Read from the composed config's ``hydra.runtime.choices`` (``compose(...,
    hydra_config=True)``) or from Hydra's running app; empty if neither is known.
    """
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if choices is None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            choices = HydraConfig.get().runtime.choices
    if choices is None:
        return {}
    return {
        str(k): "none" if v is None else str(v)
        for k, v in choices.items()
        if not str(k).startswith("hydra/")
    }


def composition(cfg: DictConfig) -> str:
    """One line naming the presets in effect, e.g. ``experiment none · data demo · model demo``."""
    choices = group_choices(cfg)
    if not choices:
        return "presets: unknown (composed without Hydra's runtime choices)"
    parts = [f"{g} {choices.get(g) or 'none'}" for g in ("experiment", "data", "model")]
    for group in ("planner", "trainer", "optim"):
        if group in choices:
            parts.append(f"{group} {choices[group]}")
    return " · ".join(parts)


def check_data_choice(cfg: DictConfig) -> None:
    """``data=demo`` only reads the synthetic demo; anything else must say ``data=msd``.

    The demo data group also brings a small network and a short CPU schedule, so
    silently training a user's dataset with it would be wrong.

    Raises:
        ConfigError: ``data.root`` points away from the demo while ``data=demo``.
    """
    demo = OmegaConf.select(cfg, "data.make_demo_if_missing", default=None)
    if not isinstance(demo, str) or OmegaConf.is_missing(cfg.data, "root"):
        return
    root = Path(str(cfg.data.root)).expanduser().resolve()
    if root != Path(demo).expanduser().resolve():
        raise ConfigError(
            f"data.root={cfg.data.root}: data=demo is the synthetic demo dataset (generated "
            f"at {demo}) and comes with the small demo network and a short CPU schedule. Fix: "
            f"for your own dataset use `data=msd data.root={cfg.data.root}` (planned for your "
            "data and GPU; see docs/data.md), or an experiment such as "
            "experiment=msd_hippocampus"
        )


_GROUP_HELP = {
    "callbacks": "Lightning callbacks (checkpoints, pictures, curves)",
    "data": "the dataset and its patches (msd: your own)",
    "debug": "short debugging runs",
    "experiment": "presets that set several groups at once",
    "hparams_search": "an Optuna search space for `segkit search`",
    "hydra": "run and sweep directories",
    "launcher": "where multirun jobs run",
    "logger": "training loggers",
    "loss": "the training loss",
    "model": "the network: block, depth, kernels, strides, channels",
    "optim": "optimizer and learning-rate schedule",
    "paths": "data and output directories",
    "planner": "self-configuration from the data (planner=auto)",
    "sweep": "sweep presets (+sweep=NAME with -m)",
    "trainer": "the Lightning Trainer",
}


def _leaves(node: Any, prefix: str) -> list[str]:
    from segkit.args import show

    if isinstance(node, dict):
        out = []
        for key, value in node.items():
            if not str(key).startswith("_"):
                out += _leaves(value, f"{prefix}.{key}")
        return out
    return [f"{prefix}={show(node)}"]


def config_help(groups: Sequence[str] = ("model", "data", "planner")) -> str:
    """``--help`` text of a command that composes ``conf/train.yaml``: every config group
    with its default option and its options, and the default keys of ``groups``."""
    import textwrap

    from segkit.args import show

    cfg = compose([], hydra_config=True)
    choices = {str(k): v for k, v in cfg.hydra.runtime.choices.items()}
    root = conf_dir()
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.yaml")))
    width = max(map(len, names))
    lines = [
        "Any other KEY=VALUE is a Hydra override of conf/train.yaml, as for python train.py.",
        "config groups (GROUP=OPTION), default option, meaning, options:",
    ]
    for name in names:
        default = show(choices[name]) if name in choices else f"(+{name}=...)"
        options = ", ".join(sorted(p.stem for p in (root / name).glob("*.yaml")))
        text = f"{name:<{width}}  {default:<16} {_GROUP_HELP.get(name, '')}; options: {options}"
        lines += textwrap.wrap(text, 98, initial_indent="  ", subsequent_indent=" " * (width + 21))
    for group in groups:
        choice = choices.get(group)
        lines.append(f"keys of {group}={show(choice)}, with their defaults:")
        body = " ".join(_leaves(OmegaConf.to_container(cfg[group], resolve=False), group))
        lines += textwrap.wrap(body, 96, initial_indent="  ", subsequent_indent="  ")
    lines.append("every key of the composed config: python train.py --cfg job")
    return "\n".join(lines) + "\n"
