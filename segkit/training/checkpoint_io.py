"""Checkpoints written atomically beside their final name.

Lightning's own writer (``TorchCheckpointIO``) stages a local checkpoint in the system's
temporary directory and moves it into place: where ``/tmp`` is another filesystem than the
run directory (a cluster's node-local disk), the move is a copy, so a process killed during
it leaves a partial ``last.ckpt``; a small ``/tmp`` fails checkpoints of a run whose disk
has room; and every kill leaks a checkpoint-sized file there. Here the temporary is a
sibling of the checkpoint (:func:`save_torch_atomic`), renamed into place, and a
full disk is a one-line :class:`~segkit.errors.DiskFullError` naming the checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from segkit.fsio import write_bytes_atomic


def save_torch_atomic(path: Path, obj: Any) -> None:
    """Writes `obj` with ``torch.save`` to `path` atomically, serialised in memory first so a
    full disk is Python's ``OSError`` (a one-line DiskFullError), not torch's RuntimeError."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose checkpoints appear under their name only complete."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        if "://" in str(path):  # a remote URL: Lightning's fsspec path handles it
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_torch_atomic(Path(path), checkpoint)
