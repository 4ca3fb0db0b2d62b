"""Network modules built from a spec and its solved plan."""

from segkit.nn.unet import UNet

__all__ = ["UNet"]
