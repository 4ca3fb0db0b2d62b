"""The built-in names a model config may use, each registered once.

Torch-free, so :mod:`segkit.spec` validates a config against it before anything is
built, and :mod:`segkit.nn` builds each name from the class registered here (a dotted
path, as a user block's ``_target_``): a name the spec accepts is one the network builds.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

# model.block / encoder_block / decoder_block: name → the block class (the block contract
# of segkit.nn.blocks); anything else is a user block named by its ``_target_``.
BLOCKS: MappingProxyType[str, str] = MappingProxyType(
    {
        "plain": "segkit.nn.blocks.PlainBlock",
        "residual": "segkit.nn.blocks.ResidualBlock",
        "bottleneck": "segkit.nn.blocks.BottleneckBlock",
        "mednext": "segkit.nn.blocks.MedNeXtBlock",
    }
)

# model.act: name → (the activation class, its default keyword arguments; the config's
# own kwargs override them).
ACTIVATIONS: MappingProxyType[str, tuple[str, MappingProxyType[str, Any]]] = MappingProxyType(
    {
        "leakyrelu": (
            "torch.nn.LeakyReLU",
            MappingProxyType({"negative_slope": 0.01, "inplace": True}),
        ),
        "relu": ("torch.nn.ReLU", MappingProxyType({"inplace": True})),
        "gelu": ("torch.nn.GELU", MappingProxyType({})),
        "prelu": ("torch.nn.PReLU", MappingProxyType({})),
    }
)


__all__ = ["ACTIVATIONS", "BLOCKS"]
