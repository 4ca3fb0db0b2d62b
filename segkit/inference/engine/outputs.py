"""How a network's output channels become probabilities and a label map: one home.

A plain segmentation network has one channel per class (background included): its
probabilities are the softmax over channels and its label map is their argmax. A
region-based network (nnU-Net's region training, BraTS) has one channel per *region*
(e.g. whole tumour ⊃ tumour core ⊃ enhancing tumour): each channel is an independent
sigmoid, and the label map is written region by region in ``regions_class_order``:
every voxel whose region probability exceeds 0.5 gets that region's label value, later
regions overwriting earlier ones (so nested regions end with the innermost label).

Validation, calibration, ``segkit predict`` (streamed or not) and ensembles all go
through :class:`OutputHead`, so they turn outputs into labels the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from segkit.errors import ConfigError

KINDS = ("softmax", "sigmoid")
REGION_THRESHOLD = 0.5


@dataclass(frozen=True)
class OutputHead:
    """What the output channels mean.

    Attributes:
        kind: ``softmax`` (one channel per class, background included) or ``sigmoid``
            (one channel per region).
        region_order: for ``sigmoid``: the label value written for each channel, in
            channel order (dataset.json ``regions_class_order``); unused for softmax.
    """

    kind: str = "softmax"
    region_order: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"output head: got kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.kind == "sigmoid" and not self.region_order:
            raise ConfigError(
                "output head: a sigmoid (region) head needs region_order, the label value "
                "of each region channel (dataset.json regions_class_order)"
            )

    @classmethod
    def regions(cls, order: Sequence[int]) -> OutputHead:
        """A region head writing ``order[i]`` where channel ``i`` is above 0.5."""
        return cls(kind="sigmoid", region_order=tuple(int(v) for v in order))

    def to_dict(self) -> dict | None:
        """``hyper_parameters.output_head`` of a checkpoint: None for softmax classes."""
        if not self.is_regions:
            return None
        return {"kind": self.kind, "region_order": list(self.region_order)}

    @classmethod
    def from_dict(cls, value: Mapping | None) -> OutputHead:
        """The head of ``hyper_parameters.output_head`` (None or empty: softmax classes).

        Raises:
            ConfigError: an unknown kind, or a region head without its order.
            TypeError, ValueError: values that are not a kind and integers.
        """
        if not value:
            return SOFTMAX
        return cls(
            kind=str(value.get("kind", "softmax")),
            region_order=tuple(int(v) for v in value.get("region_order") or ()),
        )

    @property
    def is_regions(self) -> bool:
        return self.kind == "sigmoid"

    def label_dtype(self, channels: int) -> torch.dtype:
        """The smallest integer dtype holding every label this head can write."""
        top = max(self.region_order) if self.is_regions else channels - 1
        return torch.uint8 if top < 256 else torch.int16

    def probabilities(self, logits: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Per-class softmax or per-region sigmoid of ``logits`` along ``dim``."""
        if self.is_regions:
            self._check_channels(logits.shape[dim])
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=dim)

    def labels(self, probs: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """The label map of probabilities (``dim`` removed): argmax, or regions in order."""
        if not self.is_regions:
            return probs.argmax(dim)
        return self._regions_above(probs, dim, REGION_THRESHOLD)

    def labels_from_logits(self, logits: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """The label map of one network's logits (no ensemble)."""
        if not self.is_regions:
            return logits.argmax(dim)
        # sigmoid(x) > 0.5 exactly where x > 0: no probabilities needed
        return self._regions_above(logits, dim, 0.0)

    def _regions_above(self, values: torch.Tensor, dim: int, threshold: float) -> torch.Tensor:
        """Each region's label where its channel exceeds ``threshold``, later ones on top."""
        self._check_channels(values.shape[dim])
        channels = values.movedim(dim, 0)
        seg = torch.zeros(channels.shape[1:], dtype=torch.long, device=values.device)
        for channel, value in zip(channels, self.region_order):
            seg[channel > threshold] = value
        return seg

    def _check_channels(self, n: int) -> None:
        if n != len(self.region_order):
            raise ConfigError(
                f"output head: the network has {n} output channel(s) but region_order has "
                f"{len(self.region_order)} entries; they must match (one label per region)"
            )


SOFTMAX = OutputHead()
