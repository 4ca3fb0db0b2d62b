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


class DiskFullError(SegkitError):
    """A file could not be written: the disk, a quota or the file-size limit is full.

    Args:
        path: The file being written (its final name; nothing partial is left under it).
        reason: The system's words (``[Errno 28] No space left on device``).
        rerun: How the same work is finished once there is space (the command's fix).
    """

    def __init__(
        self, path: object, reason: str, rerun: str = "run the same command again"
    ) -> None:
        super().__init__(path, reason, rerun)  # args: pickled across worker processes
        self.path, self.reason, self.rerun = path, reason, rerun

    def __str__(self) -> str:
        return (
            f"{self.path}: cannot be written: the disk is full or a file-size limit was "
            f"reached ({self.reason}). Fix: free space there (or raise the limit, ulimit -f), "
            f"then {self.rerun}"
        )

    def resumed_by(self, rerun: str) -> DiskFullError:
        """The same error, its fix naming how ``rerun`` finishes the work."""
        return DiskFullError(self.path, self.reason, rerun)


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
