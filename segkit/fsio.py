"""Atomic file writes and advisory locks: the low-level file helpers every layer uses.

Every writer writes to a temporary name in the target directory and renames it into
place, so a crash never leaves a half-written file under the final name, and a full disk
(or quota, or file-size limit) raises :class:`~segkit.errors.DiskFullError` naming the
file. Imports neither torch nor numpy (``save_npy_atomic`` imports numpy when called), so
``segkit.data``, ``training``, ``inference`` and ``sweeps`` can all use it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segkit.errors import DiskFullError

log = logging.getLogger(__name__)

# no space, a file over RLIMIT_FSIZE (Python ignores SIGXFSZ, so write() fails), a quota
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says a write found no room (the disk, a quota or the size limit)."""
    return isinstance(err, OSError) and err.errno in DISK_FULL


def disk_full(path: Path | str, err: OSError) -> DiskFullError:
    """``err`` (a write that found no room) as the one-line error naming ``path``."""
    return DiskFullError(path, f"[Errno {err.errno}] {err.strerror or err}")


def read_json(path: Path, **kwargs: Any) -> Any:
    """A JSON file's content. Whatever makes its bytes not JSON raises ``ValueError``
    (``json.JSONDecodeError``, ``UnicodeDecodeError``, and nesting too deep for the
    parser, which Python reports as ``RecursionError``); reading it raises ``OSError``.

    Args:
        path: The file.
        kwargs: Passed to ``json.loads`` (``object_pairs_hook``).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text, **kwargs)
    except RecursionError as err:
        raise ValueError("arrays or objects nested too deeply") from err


def _temp_sibling(path: Path, suffix: str) -> Path:
    # Same directory so os.replace is an atomic rename on the same filesystem;
    # leading dot + ".tmp-" lets cleanup find leftovers of a crashed run.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


@contextmanager
def atomic_path(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary sibling path that replaces `path` on success.

    Args:
        path: The final destination.
        suffix: Ending the temporary name needs (e.g. ``".nii.gz"`` so nibabel
            compresses).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full(path, err) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def save_json_atomic(path: Path, obj: Any) -> None:
    """Writes `obj` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def save_npy_atomic(path: Path, array: Any) -> None:
    """Writes `array` (a numpy array) as `.npy` to `path` atomically (temp file + rename)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))
        fh.flush()
        os.fsync(fh.fileno())


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Writes `data` to `path` atomically (temp file + fsync + rename).

    One Python ``write``: a full disk surfaces as ``OSError`` with its errno (EFBIG, ENOSPC),
    which torch's own file writer would report as a bare ``RuntimeError``.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def file_lock(path: Path, *, waiting: str = "") -> Iterator[None]:
    """Holds an exclusive advisory lock (``flock``) on `path` for the block.

    The kernel releases the lock when its holder dies, so a killed process never
    blocks the next one. Where ``fcntl`` does not exist (Windows) this does nothing.

    Args:
        path: The lock file (created if missing; never deleted: deleting it would
            let two processes lock two different files of the same name).
        waiting: Logged once as a warning if another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s", waiting or f"waiting for another process to release {path}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as err:  # e.g. Lustre mounted without flock: ENOSYS / ENOLCK
            log.warning(
                "%s: this filesystem does not support file locks (%s); concurrent runs on it "
                "are not protected from each other. Fix: start one job first, or mount it "
                "with flock support.",
                path,
                err,
            )
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
