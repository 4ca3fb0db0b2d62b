"""segkit: U-Net segmentation of medical volumes with exact, solved shapes."""

from segkit.errors import ConfigError, DataError, ExportError, SegkitError, ShapeError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "ExportError", "SegkitError", "ShapeError", "__version__"]
