"""Fuzzing with a figure: thousands of corrupted inputs, the invariant held by each.

Every case of :mod:`tests.fuzzing.corrupt` (a corrupted dataset.json, NIfTI file, split,
cache entry, checkpoint, decision, nnU-Net plans file, command-line value or train.py
override, and the command that reads it) runs in a child process forked from this one
(warm imports; cwd, memory and a hang stay the child's), under a memory limit and a time
limit. The invariant (:mod:`tests.fuzzing.invariant`): exit code 0 (the input was in fact
valid) or 2 with one ``...: error:`` line naming the file or key; never a traceback, never
a hang (past ``--timeout``), never a changed or deleted input file. Prints the figure per
file kind and every case that broke it.

    OMP_NUM_THREADS=1 python benchmarks/fuzz.py --n 2000 --seed 0
    python benchmarks/fuzz.py --n 200 --no-train        # only what the default suite samples
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzzing.corrupt import KINDS, REGRESSIONS, Assets, Case, generate  # noqa: E402
from tests.fuzzing.invariant import Outcome, run_case  # noqa: E402


def _make_assets(folder: Path) -> Assets:
    import torch

    from tests.inference.conftest import make_checkpoint

    torch.set_num_threads(1)
    with open(os.devnull, "w") as null:
        saved = os.dup(2)
        os.dup2(null.fileno(), 2)
        try:
            ckpt = make_checkpoint(folder / "base.ckpt", epochs=1)
        finally:
            os.dup2(saved, 2)
    return Assets(ckpt)


def _child(case: Case, folder: Path, assets: Assets, result: Path, memory_gb: float) -> None:
    """In the forked child: limits, fd-level capture, the case, its outcome as JSON."""
    os.setpgid(0, 0)
    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    raw = os.open(folder.parent / "fd.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(raw, 1)
    os.dup2(raw, 2)
    warnings.simplefilter("default")  # as a user's shell shows them
    try:
        outcome = run_case(case, folder, assets)
        text = (folder.parent / "fd.txt").read_text(errors="replace")
        data = {
            "argv": outcome.argv,
            "rc": outcome.rc,
            "stdout": outcome.stdout,
            # what went to the file descriptor (logging, warnings) is shown to a user too
            "stderr": text + outcome.stderr,
            "escaped": outcome.escaped,
            "changed": outcome.changed,
            "seconds": outcome.seconds,
        }
        result.write_text(json.dumps(data))
    except BaseException as exc:  # noqa: BLE001 - a failed build is reported, not fatal
        import traceback

        result.write_text(json.dumps({"build_failed": f"{exc!r}\n{traceback.format_exc()}"}))
    finally:
        os._exit(0)


def run_forked(
    case: Case, assets: Assets, *, timeout: float, memory_gb: float
) -> tuple[Outcome | None, str]:
    """The case's outcome (None if its files could not be built), or why there is none."""
    with tempfile.TemporaryDirectory(prefix="segkit-fuzz-") as tmp:
        folder, result = Path(tmp) / "case", Path(tmp) / "result.json"
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(case, folder, assets, result, memory_gb)
        status = None
        while time.perf_counter() - start < timeout:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            with _quiet():
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return Outcome(case, [], None, seconds=timeout), ""
        if not result.is_file():
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            return Outcome(case, [], -(sig or 1), escaped=f"child died (signal {sig})"), ""
        data = json.loads(result.read_text())
        if "build_failed" in data:
            return None, data["build_failed"]
        return Outcome(case, **data), ""


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return isinstance(exc[1], ProcessLookupError)


def _category(outcome: Outcome) -> list[str]:
    found = []
    for v in outcome.violations():
        if v == "hang":
            found.append("hangs")
        elif v.startswith(("uncaught", "traceback", "child died")):
            found.append("tracebacks")
        elif v.startswith("user files"):
            found.append("files changed")
        elif not (outcome.escaped and v.startswith("exit code")):
            found.append("other")
    return sorted(set(found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="generated cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="address space per case")
    parser.add_argument("--no-train", action="store_true", help="no case runs train.py")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated file kinds")
    parser.add_argument("--report", type=Path, default=None, help="every violation, in full")
    args = parser.parse_args()

    kinds = set(args.kinds.split(","))
    cases = [c for c in generate(args.n, args.seed, train=not args.no_train) if c.kind in kinds]
    cases += [c for c in REGRESSIONS if c.kind in kinds]
    print(
        f"fuzz: {len(cases)} cases ({args.n} generated, seed {args.seed}, "
        f"{len(REGRESSIONS)} regressions), {args.timeout:g} s and {args.memory_gb:g} GB per "
        f"case; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        flush=True,
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segkit-fuzz-assets-") as tmp:
        assets = _make_assets(Path(tmp))
        table: dict[str, Counter] = defaultdict(Counter)
        broken: list[Outcome] = []
        build_failures: list[str] = []
        for i, case in enumerate(cases):
            outcome, failure = run_forked(
                case, assets, timeout=args.timeout, memory_gb=args.memory_gb
            )
            row = table[case.kind]
            row["cases"] += 1
            if outcome is None:
                row["build failed"] += 1
                build_failures.append(f"{case.label}\n{failure}")
                continue
            row["seconds"] += outcome.seconds
            if outcome.rc in (0, 2):
                row[f"exit {outcome.rc}"] += 1
            for category in _category(outcome):
                row[category] += 1
            if outcome.violations():
                broken.append(outcome)
                print(f"[{i}] {case.label[:110]}: {outcome.violations()}"[:400], flush=True)
            if (i + 1) % 100 == 0:
                print(
                    f"... {i + 1}/{len(cases)} in {time.perf_counter() - start:.0f} s", flush=True
                )
    elapsed = time.perf_counter() - start
    print(_figure(table, elapsed))
    for text in build_failures:
        print(f"\nbuild failed (a generator bug, not counted): {text[-1500:]}")
    if args.report:
        args.report.write_text("\n\n".join(o.report() for o in broken))
        print(f"every violation in full: {args.report}")
    sys.exit(1 if broken else 0)


COLUMNS = ("cases", "exit 0", "exit 2", "tracebacks", "hangs", "files changed", "other")


def _figure(table: dict[str, Counter], elapsed: float) -> str:
    from segkit.table import format_table

    total: Counter = Counter()
    rows = []
    for kind in KINDS:
        if kind not in table:
            continue
        total.update(table[kind])
        rows.append(_row(kind, table[kind]))
    rows.append(_row("all", total))
    header = (*COLUMNS, "s per case")
    return (
        f"\n{format_table(('file kind', *header), rows)}\n"
        f"{total['cases']} cases in {elapsed:.0f} s; 'other': an exit code other than 0/2, "
        "not one error line, or a refusal naming neither the file nor the key"
    )


def _row(name: str, counts: Counter) -> tuple[str, ...]:
    done = max(counts["cases"] - counts["build failed"], 1)
    return (name, *(str(counts[c]) for c in COLUMNS), f"{counts['seconds'] / done:.2f}")


if __name__ == "__main__":
    main()
