"""Disk-full and kill runs of segkit's commands, and the checks on what they leave.

Shared by the default suite's sample (``tests/reliability``) and ``benchmarks/faults.py``.
A command runs as a child process (``python -m segkit.cli ...`` or ``train.py``) with:

- a lowered file-size limit (``RLIMIT_FSIZE``, set in the child before it starts; Python
  ignores ``SIGXFSZ``, so a write past the limit fails with ``EFBIG`` as on a full disk), or
- the fault injector (``inject/sitecustomize.py``) SIGKILLing it at its N-th file event.

What a run leaves is checked by :func:`corrupt_files`: every file under its final name
(temporaries are hidden ``.NAME.tmp-...`` files, and folders starting with ``.``) must be
complete and valid for its kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INJECT = Path(__file__).resolve().parent / "inject"
# a refusal: one line "PROG: error: MESSAGE" (segkit COMMAND or train.py)
ERROR_LINE = re.compile(r"^(segkit [a-z-]+|train\.py): error: \S.*$")


@dataclass(frozen=True)
class Run:
    """A finished child process (``injected``: the fault injector killed it or one of the
    processes it started)."""

    returncode: int
    stdout: str
    stderr: str
    injected: bool = False

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def refusal(self) -> str | None:
        """The one error line of a clean refusal (exit 2, no traceback), else None."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        if self.returncode != 2 or "Traceback" in self.stderr or "Logging error" in self.stderr:
            return None
        errors = [line for line in lines if ERROR_LINE.match(line)]
        return errors[0] if len(errors) == 1 and lines[-1] == errors[0] else None


def segkit(*args: object) -> list[str]:
    """The command line of ``segkit ARGS`` run from this checkout."""
    return [sys.executable, "-m", "segkit.cli", *map(str, args)]


def train_py(*args: object) -> list[str]:
    """The command line of ``python train.py ARGS`` of this checkout."""
    return [sys.executable, str(REPO / "train.py"), *map(str, args)]


def environment(extra: Mapping[str, str] | None = None, *, inject: bool = False) -> dict:
    """The child's environment: this checkout first on the path, one thread."""
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("SEGKIT_KILL_", "SEGKIT_EVENT_")):
            env.pop(key)
    paths = [str(INJECT)] if inject else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def run(
    cmd: Sequence[str],
    *,
    cwd: Path,
    fsize: int | None = None,
    kill_at: int | None = None,
    mode: str = "before",
    where: str = "",
    event_log: Path | None = None,
    timeout: float = 600,
) -> Run:
    """Runs ``cmd`` (a session of its own) under a file-size limit or a kill at an event.

    When the process is killed, its whole session (e.g. ``segkit cv``'s training jobs) is
    killed too, as when a node or a job is lost.
    """
    extra = {}
    mark = Path(cwd) / f".killed-{os.getpid()}-{kill_at}"
    if kill_at is not None:
        mark.unlink(missing_ok=True)
        extra = {"SEGKIT_KILL_AT": str(kill_at), "SEGKIT_KILL_MODE": mode}
        extra.update(SEGKIT_KILL_WHERE=where, SEGKIT_KILL_MARK=str(mark))
    if event_log is not None:
        extra.update(SEGKIT_EVENT_LOG=str(event_log), SEGKIT_KILL_WHERE=where)
    inject = kill_at is not None or event_log is not None

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=environment(extra, inject=inject),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        # what the dead process started (a training job) dies with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    injected = kill_at is not None and mark.exists()
    mark.unlink(missing_ok=True)
    return Run(proc.returncode, out, err, injected)


def events(log: Path) -> list[tuple[int, str, str]]:
    """``(pid, event, path)`` of an event log, in order."""
    rows = []
    for line in log.read_text().splitlines():
        pid, event, path = line.split("\t", 2)
        rows.append((int(pid), event, path))
    return rows


def count_events(log: Path) -> int:
    """The kill points a run offers: the events of the first process in its log."""
    rows = events(log)
    return sum(1 for pid, _, _ in rows if pid == rows[0][0]) if rows else 0


def is_temporary(path: Path, root: Path) -> bool:
    """A temporary of an atomic write, or anything inside a hidden folder (a stage such as
    ``.oof-partial/``; Hydra's ``.hydra/`` holds final files)."""
    parts = path.relative_to(root).parts
    hidden = [p for p in parts[:-1] if p.startswith(".") and p != ".hydra"]
    return ".tmp-" in path.name or bool(hidden)


def check_file(path: Path) -> str | None:
    """Why ``path`` is not a complete, valid file of its kind; None when it is."""
    import nibabel as nib
    import numpy as np
    import yaml

    name = path.name
    try:
        if name.endswith((".nii", ".nii.gz")):
            np.asarray(nib.load(str(path)).dataobj)
        elif name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
        elif name.endswith((".yaml", ".yml")):
            if path.stat().st_size == 0:
                return "empty"
            yaml.safe_load(path.read_text())
        elif name.endswith(".ckpt"):
            from segkit.inference.predict.checkpoint import read_checkpoint

            read_checkpoint(path)
        elif name.endswith(".npz"):
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                return f"member {bad} damaged"
            with np.load(path, allow_pickle=False) as data:
                for member in data.files:
                    data[member]
        elif name.endswith(".npy"):
            np.load(path, allow_pickle=False)
        elif name.endswith(".png") and path.read_bytes()[-8:] != b"IEND\xaeB`\x82":
            return "no PNG end chunk"
    except Exception as err:  # noqa: BLE001 - any failure to read is the finding
        return f"{type(err).__name__}: {err}"
    return None


def corrupt_files(*roots: Path) -> dict[str, str]:
    """Every file under its final name below ``roots`` that is not complete and valid."""
    found = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and not is_temporary(path, root):
                why = check_file(path)
                if why:
                    found[str(path)] = why
    return found


def hashes(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file below ``roots`` (inputs that must stay unchanged)."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }
