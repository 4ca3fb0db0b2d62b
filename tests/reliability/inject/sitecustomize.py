"""Fault injection for segkit's reliability checks: a process that SIGKILLs itself at
the N-th file event, so a kill lands at a chosen point, not at a moment a poll loop saw.

Python imports this module at start-up when its folder is on ``PYTHONPATH``; it does
nothing unless ``SEGKIT_KILL_AT`` or ``SEGKIT_EVENT_LOG`` is set. The events are Python's
audit events for files (``sys.addaudithook``): an open for writing, a rename or replace,
a removal, a link, a directory made or removed. They cover every writer that goes through
Python (json, numpy, nibabel, zipfile, Lightning, Hydra, logging); torch's C++ file writer
raises none, so its files are seen when they are renamed.

- ``SEGKIT_KILL_AT=N``: SIGKILL at the N-th event (1-based), before it happens.
- ``SEGKIT_KILL_MODE=during``: instead, let the N-th event (an open for writing) happen and
  SIGKILL once the file holds bytes (or after 20 ms): a kill in the middle of a write.
- ``SEGKIT_KILL_WHERE=TEXT``: only a process whose command line holds TEXT counts (the
  variables pass to child processes: ``segkit cv``'s training jobs).
- ``SEGKIT_KILL_MARK=FILE``: a line is appended to FILE just before the kill (a run whose
  killed process was a child, which its parent survived, is known to have been killed).
- ``SEGKIT_EVENT_LOG=FILE``: each event is appended to FILE as ``pid<TAB>event<TAB>path``
  (a run without a kill counts the points there are, and shows which paths are written
  under their final name).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_EVENTS = {
    "os.rename": "rename",
    "os.remove": "remove",
    "shutil.rmtree": "rmtree",
    "os.link": "link",
    "os.symlink": "symlink",
    "os.mkdir": "mkdir",
    "os.rmdir": "rmdir",
}


def _die() -> None:
    mark = os.environ.get("SEGKIT_KILL_MARK")
    if mark:
        fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _die_once_written(path: str) -> None:
    deadline = time.monotonic() + 0.02
    while time.monotonic() < deadline:
        try:
            if os.stat(path).st_size > 0:
                break
        except OSError:
            pass
        time.sleep(0.0005)
    _die()


def _install() -> None:
    kill_at = int(os.environ.get("SEGKIT_KILL_AT", "0") or 0)
    log_path = os.environ.get("SEGKIT_EVENT_LOG")
    where = os.environ.get("SEGKIT_KILL_WHERE", "")
    if not (kill_at or log_path) or where not in " ".join(sys.orig_argv):
        return
    during = os.environ.get("SEGKIT_KILL_MODE", "before") == "during"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if log_path else None
    count = 0

    def hook(event: str, args: tuple) -> None:
        nonlocal count
        if event == "open":
            path, mode, flags = args
            writing = (
                any(c in mode for c in "wax+")
                if isinstance(mode, str)
                else bool((flags or 0) & _WRITING)
            )
            if not writing or not isinstance(path, str | bytes) or str(path).startswith("/dev"):
                return
            name = "write"
        elif event in _EVENTS:
            two = event in ("os.rename", "os.link", "os.symlink")  # (source, destination, ...)
            name, path = _EVENTS[event], args[1] if two else args[0]
        else:
            return
        path = os.fsdecode(path) if isinstance(path, str | bytes) else str(path)
        count += 1
        if log_fd is not None:
            os.write(log_fd, f"{os.getpid()}\t{name}\t{path}\n".encode())
        if count != kill_at:
            return
        if during and name == "write":
            threading.Thread(target=_die_once_written, args=(path,), daemon=True).start()
        else:
            _die()

    sys.addaudithook(hook)


_install()
