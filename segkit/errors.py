"""User-facing errors. Each says what is wrong, where, and how to fix it."""

from __future__ import annotations

import sys


class SegkitError(Exception):
    """Base class of all segkit errors a user can cause."""


class ConfigError(SegkitError, ValueError):
    """A configuration key has a wrong type or value."""


class ShapeError(SegkitError, ValueError):
    """An architecture cannot process the requested input size."""


class DataError(SegkitError, ValueError):
    """A dataset file or layout is missing or inconsistent."""


class ExportError(SegkitError, RuntimeError):
    """An exported model does not reproduce the eager network."""


def refuse(prog: str, exc: BaseException) -> int:
    """Prints ``PROG: error: MESSAGE`` as one line on stderr; returns exit code 2.

    A progress bar still open (the error interrupted its loop) is closed first, so the
    line starts at the margin.
    """
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
    return 2


def interpolation_error(exc: Exception, cfg: object = None) -> ConfigError:
    """A config value's ``${...}`` that names nothing (OmegaConf's error), as one line; with
    the composed ``cfg``, its key is found there when the error lost it (a copy resolved)."""
    if not getattr(exc, "full_key", None) and cfg is not None:
        from omegaconf import OmegaConf

        try:
            OmegaConf.to_container(cfg, resolve=True)
        except Exception as found:  # noqa: BLE001 - only its key is wanted
            exc = found if getattr(found, "full_key", None) else exc
    text = " ".join(str(exc).split())
    key = getattr(exc, "full_key", None) or "KEY"
    where = "" if f"full_key: {key}" in text else f"{key}: "
    return ConfigError(
        f"config: {where}{text}. Fix: give the value itself ({key}=VALUE), or quote a text "
        f"holding '${{' ({key}='...')"
    )
