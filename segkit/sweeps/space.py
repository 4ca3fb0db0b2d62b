"""A search space in Hydra's sweeper grammar, as Optuna distributions.

``model.depth=3,4,5``, ``choice(3,5)`` and ``range(3,6)`` are categorical (every value is
listed, so they can be enumerated, checked before any run and searched on a grid);
``interval(a,b)`` is a float range, ``int(interval(a,b))`` an integer one and
``tag(log, interval(a,b))`` a log-scaled one. Parsed with Hydra's own override parser.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segkit.errors import ConfigError

_PRIMITIVE = (bool, int, float, str)


@dataclass(frozen=True)
class Dimension:
    """One searched key.

    Attributes:
        key: The config key (``model.depth``).
        choices: The listed values (categorical), or None for an interval.
        texts: Each choice written as an override value (``[3,3]`` for a list).
        low: Lower end of an interval.
        high: Upper end of an interval.
        integer: The interval holds integers.
        log: The interval is sampled on a log scale.
        source: The entry as written (``model.depth=choice(3,4,5)``).
    """

    key: str
    choices: tuple[Any, ...] | None = None
    texts: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0
    integer: bool = False
    log: bool = False
    source: str = ""

    def distribution(self) -> Any:
        """The Optuna distribution of this key."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def text(self, value: Any) -> str:
        """``value`` written as an override value."""
        if self.choices is not None:
            for choice, text in zip(self.choices, self.texts):
                if choice == value and type(choice) is type(value):
                    return text
        if isinstance(value, float):
            return repr(value)
        return str(value)


@dataclass(frozen=True)
class SearchSpace:
    """The searched keys and the fixed overrides every trial gets.

    Attributes:
        dimensions: The searched keys, in the order given.
        fixed: Every other override (presets, fixed values), as written.
    """

    dimensions: tuple[Dimension, ...]
    fixed: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.dimensions)

    def distributions(self) -> dict[str, Any]:
        return {d.key: d.distribution() for d in self.dimensions}

    @property
    def enumerable(self) -> bool:
        """Every key lists its values (no interval): the space is finite."""
        return all(d.choices is not None for d in self.dimensions)

    @property
    def size(self) -> float:
        """Number of combinations (``inf`` with an interval)."""
        return math.prod(len(d.choices) if d.choices is not None else math.inf
                         for d in self.dimensions)  # fmt: skip

    def grid(self) -> dict[str, list[Any]]:
        """The space as ``GridSampler`` wants it.

        Raises:
            ConfigError: A key is an interval.
        """
        ranged = [d.source for d in self.dimensions if d.choices is None]
        if ranged:
            raise ConfigError(
                f"sampler=grid needs listed values; {', '.join(ranged)} is a range. Fix: list "
                "the values (key=a,b,c), or sampler=tpe / sampler=random"
            )
        return {d.key: list(d.choices) for d in self.dimensions}

    def combinations(self) -> Iterator[dict[str, Any]]:
        """Every combination of the listed keys (intervals left out), in order."""
        listed = [d for d in self.dimensions if d.choices is not None]
        for values in itertools.product(*(d.choices for d in listed)):
            yield dict(zip((d.key for d in listed), values))

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The overrides of one trial's parameters (keys of this space, in its order)."""
        return [f"{d.key}={d.text(params[d.key])}" for d in self.dimensions if d.key in params]


def _dimension(override: Any) -> Dimension:
    key = override.get_key_element()
    if override.is_interval_sweep():
        sweep = override.value()
        integer = isinstance(sweep.start, int) and isinstance(sweep.end, int)
        return Dimension(
            key=key,
            low=sweep.start,
            high=sweep.end,
            integer=integer,
            log="log" in (sweep.tags or ()),
            source=override.input_line,
        )
    values = list(override.sweep_iterator())
    texts = list(override.sweep_string_iterator())
    choices = tuple(v if isinstance(v, _PRIMITIVE) or v is None else t
                    for v, t in zip(values, texts))  # fmt: skip
    if len(set(texts)) != len(texts):
        raise ConfigError(f"{override.input_line}: a value is listed twice. Fix: list each once")
    return Dimension(key=key, choices=choices, texts=tuple(texts), source=override.input_line)


def parse_space(overrides: Sequence[str], preset: Mapping[str, str] | None = None) -> SearchSpace:
    """The search space of a command line plus a preset's ``hydra.sweeper.params``.

    A key swept on the command line replaces the preset's entry; a key fixed on the command
    line (``model.kernel_size=3``) removes it from the search.

    Raises:
        ConfigError: An override does not parse, or nothing is searched.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        cli = parser.parse_overrides(list(overrides))
        given = {o.get_key_element() for o in cli}
        entries = [f"{k}={v}" for k, v in (preset or {}).items() if k not in given]
        parsed = parser.parse_overrides(entries)
    except HydraException as exc:
        raise ConfigError(f"overrides: {' '.join(str(exc).split())}") from None
    dims, fixed = [], []
    for o in [*parsed, *cli]:
        if o.is_sweep_override():
            dims.append(_dimension(o))
        else:
            fixed.append(o.input_line)
    if not dims:
        raise ConfigError(
            "nothing to search: no swept key. Fix: give one, e.g. model.depth=3,4,5 "
            "'model.kernel_size=choice(3,5)', or a preset: hparams_search=optuna"
        )
    return SearchSpace(dimensions=tuple(dims), fixed=tuple(fixed))
