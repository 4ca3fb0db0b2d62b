"""Hydra's composition errors become one-line ConfigErrors, also when a config file itself
(not the command line) names the key Hydra cannot override."""

from __future__ import annotations

import pytest

import segkit.config as config
from segkit.errors import ConfigError


def test_unknown_key_from_the_command_line_lists_what_is_there():
    with pytest.raises(ConfigError, match=r"unknown key 'model\.depht'; model has: .*depth"):
        config.compose(["model.depht=3"])


def test_override_named_by_a_config_file_is_one_error_not_a_recursion(monkeypatch):
    """A defaults list that overrides a group Hydra cannot override fails the same way on
    every composition; the error must not compose again (it once recursed until Python's
    limit)."""
    calls = []
    real = config.compose

    def failing_compose(overrides, **kw):
        calls.append(list(overrides))
        if len(calls) > 5:
            raise AssertionError("composed again and again")
        return real(overrides, **kw)

    monkeypatch.setattr(config, "compose", failing_compose)
    text = "In 'data/msd': Could not override 'planner'. No match in the defaults list."
    err = config._config_error(text, ["data=msd"], "train")
    assert isinstance(err, ConfigError)
    assert "In 'data/msd': Could not override 'planner'" in str(err)  # Hydra's, one line
    assert calls == []  # 'planner' is not on the command line: nothing to leave out
