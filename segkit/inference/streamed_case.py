"""``segkit predict``'s streamed case: the checkpoints as stream runs, and the disk the
streamed ``save_probabilities`` needs (see :mod:`segkit.inference.stream` and
:mod:`segkit.data.invert`)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from segkit.data.invert import probability_bytes
from segkit.errors import ConfigError, DataError
from segkit.inference.predict.checkpoint import LoadedModel
from segkit.inference.stream import Consumer, ModelRun, stream_predict


class CaseDecisions(list):
    """Per checkpoint (what inference ran, where its overlap/window came from), and the
    streamed path's memory plan (``memory``, empty when not streamed)."""

    def __init__(self, items=(), *, memory: str = "") -> None:
        super().__init__(items)
        self.memory = memory


def check_dims(model: LoadedModel) -> None:
    """Prediction runs 2D and 3D networks only."""
    if model.spec.spatial_dims not in (2, 3):
        raise ConfigError(f"prediction supports 2D and 3D models, not {model.spec.spatial_dims}D")


def stream_case(
    models: Sequence[LoadedModel],
    image: np.ndarray,
    opts,
    device: torch.device,
    consumer: Consumer | None = None,
    *,
    block: int | None = None,
):
    """The streamed path: labels on the preprocessed grid (probabilities to ``consumer``),
    per model (decision, where its overlap/window came from), and the memory plan's line.
    ``opts``: the :class:`~segkit.inference.predict.run.PredictOptions`."""
    runs, sources = [], []
    for model in models:
        check_dims(model)
        settings, source = opts.settings(model)
        runs.append(ModelRun(model.net, tuple(model.patch_size), settings, model.slice_axis))
        sources.append(source)
    result = stream_predict(
        runs,
        torch.from_numpy(image).to(device)[None],
        models[0].head,
        classes=models[0].spec.out_channels,
        accumulate=opts.accumulate,
        max_memory_gb=opts.max_memory_gb,
        consumer=consumer,
        progress=opts.progress,
        block=block,
    )
    return result.labels, list(zip(result.decisions, sources)), result.plan.describe()


def temp_npy(output_dir: Path, case_id: str, tag: str) -> Path:
    """A hidden temporary next to the outputs (``.tmp-`` names, as :mod:`segkit.fsio`)."""
    return output_dir / f".{case_id}.npz.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{tag}.npy"


def check_disk(output_dir: Path, case_id: str, classes: int, props: dict) -> None:
    """Refuses ``save_probabilities`` before inference where the disk is short.

    Raises:
        DataError: naming the case, the size it would take, the free space and the fix.
    """
    need = probability_bytes(classes, props) * 3 // 2  # the two temporaries and the archive
    free = shutil.disk_usage(output_dir).free
    if need > free:
        raise DataError(
            f"save_probabilities: case '{case_id}' needs about {need / 2**30:.1f} GiB of disk "
            f"in {output_dir} for its float16 probabilities ({classes} classes), but "
            f"{free / 2**30:.1f} GiB are free. Fix: free space there, choose another output=, "
            "or save_probabilities=false"
        )
