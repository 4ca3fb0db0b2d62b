"""Network modules built from a spec; the network plans itself (:func:`plan_unet`)."""

from segkit.nn.unet import UNet, plan_unet

__all__ = ["UNet", "plan_unet"]
