"""User-facing errors. Each says what is wrong, where, and how to fix it."""


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
