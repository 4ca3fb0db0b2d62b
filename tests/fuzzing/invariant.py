"""What a corrupted input may do, and running a case to see.

The invariant: the command exits 0 (the input was in fact valid) or 2 with exactly one
``...: error: ...`` line on stderr naming the file (or key; train.py may log its start
before it, as every training run does) — never a traceback or an
exception escaping the command, never a file that was there before changed or deleted
(segkit's own cache entries, :attr:`Case.replaceable`, may be recomputed). A hang is
the caller's to time (``benchmarks/fuzz.py`` runs each case in a child with a timeout).

:func:`run_case` runs a case in this process: ``segkit`` through ``segkit.cli.main``,
``train.py`` as ``python train.py`` runs it (``__main__`` with ``sys.argv``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import runpy
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzzing.corrupt import REPO, Assets, Case

ERROR_LINE = re.compile(r"^(segkit [a-z-]+|train\.py): error: \S")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name → sha256; links and pipes by kind)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath, name)
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[rel] = "special"
    return found


def changed_files(before: dict[str, str], after: dict[str, str], case: Case) -> list[str]:
    """Files that were there before and are changed or gone (save replaceable ones)."""
    return sorted(
        f"{rel} ({'deleted' if rel not in after else 'changed'})"
        for rel, digest in before.items()
        if after.get(rel) != digest and not rel.startswith(case.replaceable or ("\0",))
    )


def shown_lines(text: str) -> list[str]:
    """The non-blank lines a terminal shows (a progress bar's ``\\r`` rewrites a line)."""
    return [s for s in (line.rsplit("\r", 1)[-1].strip() for line in text.split("\n")) if s]


@dataclass
class Outcome:
    """What one case did.

    Attributes:
        case: the case.
        argv: its command line.
        rc: exit code; None when it did not finish (a hang, timed by the caller).
        stdout, stderr: what it printed.
        escaped: the traceback of an exception that escaped the command, if any.
        changed: files changed or deleted (see :func:`changed_files`).
        seconds: wall time of the command (not of building the files).
    """

    case: Case
    argv: list[str]
    rc: int | None
    stdout: str = ""
    stderr: str = ""
    escaped: str | None = None
    changed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def violations(self) -> list[str]:
        """Every way this outcome breaks the invariant (empty: it holds)."""
        found = []
        if self.rc is None:
            return ["hang"]
        if self.escaped:
            found.append("uncaught exception: " + self.escaped.strip().splitlines()[-1])
        elif "Traceback (most recent call last)" in self.stdout + self.stderr:
            found.append("traceback printed")
        if self.rc not in (0, 2):
            found.append(f"exit code {self.rc}")
        if self.rc == 2:
            lines = shown_lines(self.stderr)
            errors = [line for line in lines if ERROR_LINE.match(line)]
            # a training run logs its start (Lightning, Hydra) before a refusal in setup
            logs = self.case.command == "train.py"
            if len(errors) != 1 or lines[-1] != errors[0] or len(lines) > 1 and not logs:
                found.append(f"not one error line: {lines[-3:]}")
            elif not any(name in errors[0] for name in self.case.names):
                found.append(f"the error names none of {list(self.case.names)}")
        if self.changed:
            found.append(f"user files changed: {self.changed}")
        return found

    def report(self) -> str:
        """The case, its command, its output's end and what it broke."""
        text = self.escaped or (self.stderr[-2000:] + self.stdout[-500:])
        return (
            f"{self.case.label}\n  argv: {self.argv}\n  rc: {self.rc}\n"
            f"  violations: {self.violations()}\n  output:\n{text}"
        )


def run_command(argv: list[str]) -> int:
    """Runs ``segkit ...`` or ``train.py ...`` here, as its console script would; an
    exception escaping it propagates."""
    if argv[0] == "segkit":
        from segkit.cli import main

        return main(argv[1:])
    saved = sys.argv
    sys.argv = [str(REPO / "train.py"), *argv[1:]]
    try:
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


def run_case(case: Case, folder: Path, assets: Assets) -> Outcome:
    """Builds ``case`` under ``folder`` and runs its command in this process (cwd: the
    folder), capturing what it prints and any exception that escapes it."""
    import time

    folder.mkdir(parents=True, exist_ok=True)
    argv = case.build(folder, assets)
    before = snapshot(folder)
    out, err = io.StringIO(), io.StringIO()
    escaped, rc = None, None
    start = time.perf_counter()
    with contextlib.chdir(folder), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = run_command(argv)
        except Exception:  # noqa: BLE001 - escaping the command is what is checked
            escaped = traceback.format_exc()
    seconds = time.perf_counter() - start
    changed = changed_files(before, snapshot(folder), case)
    return Outcome(case, argv, rc if escaped is None else 1, out.getvalue(), err.getvalue(),
                   escaped, changed, seconds)  # fmt: skip


__all__ = ["ERROR_LINE", "Outcome", "changed_files", "run_case", "run_command", "snapshot"]
