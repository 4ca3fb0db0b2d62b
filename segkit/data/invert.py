"""Probabilities back on the original grid, slab by slab, through files on disk.

:meth:`~segkit.data.preprocess.Preprocessor.invert` maps a whole ``(K, *S)`` array in memory.
For ``save_probabilities`` on large many-class volumes that is the largest buffer of a
prediction, so here the finalised probabilities go to a float16 ``.npy`` on disk
(:class:`ProbabilityFile`, written tile by tile while the stream runs), are inverted slab by
slab along the canonical first axis into a second float16 ``.npy`` on the original grid, which
:func:`write_probabilities_npz` streams into the ``{case}.npz`` that ``np.load`` reads (keys
``probabilities``, ``label_names``). Each slab maps the files anew, so the pages it touched
leave the process' resident set when it is done. Both inversions resample through the one
:func:`~segkit.data.preprocess.resample_rows`, which reads only the rows (and the halo) a slab
needs: the result equals ``Preprocessor.invert`` of the float16 probabilities, bit for bit
(``tests/inference/test_stream_probabilities.py``).
"""

from __future__ import annotations

import io
import math
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import apply_orientation

from segkit.data.preprocess import resample_rows

_SLAB_BYTES = 32 * 2**20


def probability_bytes(classes: int, props: dict[str, Any]) -> int:
    """Disk bytes the two float16 temporaries take (the ``.npz`` needs at most the second)."""
    pre = math.prod(props["resampled_shape"])
    orig = math.prod(props["original_shape"])
    return 2 * classes * (pre + orig)


class ProbabilityFile:
    """A float16 ``(K, *S)`` ``.npy`` on disk, written one spatial box at a time."""

    def __init__(self, path: Path, classes: int, shape: Sequence[int]) -> None:
        self.path = Path(path)
        mm = np.lib.format.open_memmap(
            self.path, mode="w+", dtype=np.float16, shape=(classes, *shape)
        )
        del mm

    def write(self, box: tuple[slice, ...], probs: Any) -> None:
        """Stores ``probs`` ``(K, *extent of box)`` at ``box``, one slice per spatial axis."""
        block = np.asarray(probs.cpu().numpy() if hasattr(probs, "cpu") else probs)
        mm = np.load(self.path, mmap_mode="r+")
        extent = tuple(len(range(*s.indices(n))) for s, n in zip(box, mm.shape[1:], strict=True))
        if block.shape != (mm.shape[0], *extent):
            raise ValueError(
                f"{self.path}: a box of extent {extent} takes probabilities of shape "
                f"{(mm.shape[0], *extent)}, got {block.shape}."
            )
        mm[(slice(None), *box)] = block.astype(np.float16)
        mm.flush()
        del mm


def invert_probabilities(
    src: Path, props: dict[str, Any], dst: Path, *, regions: bool = False
) -> None:
    """Writes ``dst``: float16 ``(K, *original)`` probabilities from the float16 ``(K, *S)``
    ``src`` on the preprocessed grid (resampled linearly, un-cropped with certain
    background, reoriented), one slab of canonical rows at a time. Outside the crop,
    background is certain: channel 0 (background) is 1 and every other channel 0 for
    classes; with ``regions`` (one sigmoid channel per region, no background channel)
    every channel is 0."""
    head = np.load(src, mmap_mode="r")
    classes = head.shape[0]
    del head
    crop = tuple(props["shape_after_crop"])
    canon = tuple(props["canonical_shape"])
    box = [tuple(b) for b in props["crop_box"]]
    ornt = np.asarray(props["orientation"], dtype=float)
    np.lib.format.open_memmap(
        dst, mode="w+", dtype=np.float16, shape=(classes, *props["original_shape"])
    )
    rows = max(1, _SLAB_BYTES // (4 * canon[1] * canon[2]))
    (lo0, hi0), (lo1, hi1), (lo2, hi2) = box
    for a in range(0, canon[0], rows):
        b = min(canon[0], a + rows)
        pre = np.load(src, mmap_mode="r")
        out = np.load(dst, mmap_mode="r+")
        ca, cb = max(a, lo0) - lo0, min(b, hi0) - lo0
        for k in range(classes):
            view = apply_orientation(out[k], ornt)  # the original array seen canonically
            view[a:b] = 1.0 if k == 0 and not regions else 0.0  # certain background
            if ca < cb:
                slab = resample_rows(pre[k], crop, (ca, cb), order=1)
                view[lo0 + ca : lo0 + cb, lo1:hi1, lo2:hi2] = slab
        out.flush()
        del pre, out


def write_probabilities_npz(
    path: Path,
    probabilities_npy: Path,
    label_names: Sequence[str],
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Writes ``path`` (an ``.npz``: ``probabilities``, ``label_names`` and ``extra``'s
    arrays) streaming the ``.npy`` file from disk into the compressed archive."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        with (
            open(probabilities_npy, "rb") as src,
            zf.open("probabilities.npy", "w", force_zip64=True) as member,
        ):
            shutil.copyfileobj(src, member, 16 * 2**20)
        buf = io.BytesIO()
        np.save(buf, np.asarray(list(label_names)))
        zf.writestr("label_names.npy", buf.getvalue())
        for name, array in (extra or {}).items():
            buf = io.BytesIO()
            np.save(buf, array)
            zf.writestr(f"{name}.npy", buf.getvalue())
