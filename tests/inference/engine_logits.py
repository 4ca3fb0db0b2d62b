"""The engine's logits of whole volumes, assembled from its tiles (for tests only: the engine
itself never holds a volume's logits)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from segkit.defaults import SLICE_AXIS
from segkit.inference.engine.outputs import SOFTMAX, OutputHead
from segkit.inference.engine.segment import segment
from segkit.inference.engine.settings import InferenceSettings
from segkit.inference.engine.sliding import ModelRun


def engine_logits(
    net,
    x: torch.Tensor,
    patch: Sequence[int],
    settings: InferenceSettings | None = None,
    *,
    slice_axis: int = SLICE_AXIS,
    head: OutputHead = SOFTMAX,
    max_memory_gb: float | None = None,
    **kw,
) -> torch.Tensor:
    """Logits (N, K, *S) of volumes (N, C, *S) through :func:`segment`, one volume at a time.
    ``kw``: InferenceSettings fields (when ``settings`` is None)."""
    settings = settings or InferenceSettings(**kw)
    run = ModelRun(net, tuple(patch), settings, slice_axis)
    k = net.spec.out_channels
    out = []
    for v in x.split(1):
        logits = torch.full((k, *v.shape[2:]), float("nan"), device=v.device)

        def keep(box, tile, logits=logits):
            logits[(slice(None), *box)] = tile

        segment([run], v, head, classes=k, logits=keep, max_memory_gb=max_memory_gb)
        out.append(logits)
    return torch.stack(out)
