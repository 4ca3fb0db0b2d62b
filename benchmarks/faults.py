"""Disk full and killed at any moment, as figures: preprocessing + training, predict, cv, select.

Every command runs as a child process on a small demo (``tests.reliability.faults``):

- **disk full**: under each of a ladder of file-size limits (``RLIMIT_FSIZE``; Python
  ignores ``SIGXFSZ``, so a write past it fails with ``EFBIG`` as on a full disk). The run
  must finish (exit 0) or stop with exit 2 and one ``...: error:`` line, never a traceback;
- **kill**: SIGKILLed at seeded random file events of a counted run (an open for writing,
  a rename, a removal...: ``tests/reliability/inject``), half of them *before* the event,
  half *during* the write the event opens.

After each run every file under its final name must be complete and valid (NIfTI loads,
JSON and YAML parse, checkpoints load with segkit's weights-only reader, ``.npz`` and
``.npy`` load, PNGs end), and the same command again, with room and no kill (train.py
with ``resume=true``), must finish the job: predict's label maps equal a clean run's,
training reaches the clean run's step count, cv's summary has every fold, select writes the
clean run's decision. Prints the figure per command and in all.

    OMP_NUM_THREADS=1 python benchmarks/faults.py                  # ~15 min on 2 cores
    python benchmarks/faults.py --kills 4 --only predict,select    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reliability.faults import (  # noqa: E402
    Run,
    corrupt_files,
    count_events,
    run,
    segkit,
    train_py,
)
from tests.utils import TINY_JOB  # noqa: E402

KB = 1024


@dataclass
class Job:
    """One command: how to run it in a fresh workspace, rerun it, and check it finished."""

    name: str
    command: Callable[[Path], list[str]]  # workspace -> command line
    rerun: Callable[[Path], list[str]]  # workspace -> the command that finishes the job
    outputs: Callable[[Path], list[Path]]  # workspace -> folders to check
    finished: Callable[[Path], str | None]  # workspace -> why not finished (None: finished)
    limits: tuple[int, ...]  # file-size limits in bytes
    where: tuple[str, ...] = ("",)  # which process the kills aim at (command-line text)
    prepare: Callable[[Path], None] = lambda ws: None


@dataclass
class Tally:
    runs: int = 0
    refused: int = 0  # disk full: exit 2 with one error line
    finished_anyway: int = 0  # disk full: the limit was not reached
    kills: int = 0
    not_reached: int = 0  # the kill point lay past the run's end
    bad_exits: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    resumed: int = 0
    temporaries: int = 0  # hidden .tmp- files a killed process left (not under a final name)
    not_resumed: list[str] = field(default_factory=list)
    points: int = 0
    seconds: float = 0.0


def _check(tally: Tally, job: Job, ws: Path, what: str) -> None:
    for path, why in corrupt_files(*job.outputs(ws)).items():
        tally.corrupt.append(f"{what}: {path}: {why}")
    again = run(job.rerun(ws), cwd=ws)
    why = f"exit {again.returncode}: {again.stderr[-300:]}" if again.returncode else None
    why = why or job.finished(ws)
    if why is None:
        tally.resumed += 1
    else:
        tally.not_resumed.append(f"{what}: {why}")
    for path, why in corrupt_files(*job.outputs(ws)).items():
        tally.corrupt.append(f"{what}, after the rerun: {path}: {why}")
    tally.temporaries += sum(
        1 for folder in job.outputs(ws) for p in folder.rglob("*") if ".tmp-" in p.name
    )


def disk_full(job: Job, base: Path, tally: Tally) -> None:
    for limit in job.limits:
        ws = _workspace(base, job, f"full-{limit}")
        got: Run = run(job.command(ws), cwd=ws, fsize=limit)
        tally.runs += 1
        what = f"{job.name} under {limit} bytes"
        if got.returncode == 0:
            tally.finished_anyway += 1
        elif got.refusal() is not None:
            tally.refused += 1
        else:
            tally.bad_exits.append(f"{what}: exit {got.returncode}: {got.stderr[-800:]}")
        _check(tally, job, ws, what)
        shutil.rmtree(ws, ignore_errors=True)


def kills(job: Job, base: Path, tally: Tally, *, count: int, rng: random.Random) -> None:
    for where in job.where:
        ws = _workspace(base, job, "count")
        log = ws / "events.log"
        counted = run(job.command(ws), cwd=ws, event_log=log, where=where)
        if counted.returncode:
            raise SystemExit(f"{job.name}: the counted run failed: {counted.stderr[-2000:]}")
        points = count_events(log)
        tally.points += points
        shutil.rmtree(ws, ignore_errors=True)
        chosen = sorted(rng.sample(range(1, points + 1), min(count, points)))
        for n, point in enumerate(chosen):
            mode = "before" if n % 2 == 0 else "during"
            ws = _workspace(base, job, f"kill-{point}-{mode}")
            got = run(job.command(ws), cwd=ws, kill_at=point, mode=mode, where=where)
            tally.runs += 1
            aim = f"{mode}, in {where}" if where else mode
            what = f"{job.name} killed at event {point}/{points} ({aim})"
            if got.injected:  # (a killed training job: cv goes on without its fold)
                tally.kills += 1
            elif got.returncode == 0:
                tally.not_reached += 1
            else:
                tally.bad_exits.append(f"{what}: exit {got.returncode}: {got.stderr[-800:]}")
            _check(tally, job, ws, what)
            shutil.rmtree(ws, ignore_errors=True)


def _workspace(base: Path, job: Job, tag: str) -> Path:
    ws = base / f"{job.name}-{tag}"
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    job.prepare(ws)
    return ws


def _labels(folder: Path) -> dict:
    import nibabel as nib
    import numpy as np

    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("[!.]*.nii.gz"))}


def make_jobs(base: Path) -> dict[str, Job]:
    """The jobs, and the clean runs their reruns are compared with."""
    import numpy as np

    from segkit.data.demo import make_demo

    data = base / "data"
    make_demo(data / "demo", num_cases=6, seed=0)
    tiny = [*TINY_JOB, f"paths.data_dir={data}"]

    def train(ws: Path, *extra: str) -> list[str]:
        return train_py(
            *tiny, "trainer.max_epochs=2",
            f"hydra.run.dir={ws / 'run'}", f"data.cache_dir={ws / 'cache'}", *extra,
        )  # fmt: skip

    clean = base / "clean"
    clean.mkdir()
    ref = run(train(clean), cwd=clean)
    assert ref.returncode == 0, ref.stderr[-3000:]
    steps = json.loads((clean / "run" / "metrics.json").read_text())["global_step"]
    ckpt = clean / "run" / "checkpoints" / "best.ckpt"

    def train_done(ws: Path) -> str | None:
        metrics = json.loads((ws / "run" / "metrics.json").read_text())
        if metrics.get("status") != "ok" or metrics.get("global_step") != steps:
            return f"metrics.json: {metrics.get('status')}, step {metrics.get('global_step')}"
        return None

    def predict(ws: Path) -> list[str]:
        return segkit(
            "predict", f"ckpt={ckpt}", f"input={data / 'demo' / 'imagesTs'}",
            f"output={ws / 'pred'}", "save_probabilities=true", "progress=false", "device=cpu",
        )  # fmt: skip

    ref = run(predict(clean), cwd=clean)
    assert ref.returncode == 0, ref.stderr[-3000:]
    labels = _labels(clean / "pred")

    def predict_done(ws: Path) -> str | None:
        got = _labels(ws / "pred")
        npz = sorted(p.stem for p in (ws / "pred").glob("[!.]*.npz"))
        if got.keys() != labels.keys() or len(npz) != len(labels):
            return f"cases {sorted(got)}, .npz {npz}"
        if not all(np.array_equal(got[k], labels[k]) for k in labels):
            return "labels differ from the clean run's"
        return None

    def cv(ws: Path) -> list[str]:
        return segkit("cv", "folds=2", f"out={ws / 'cv'}", "device=cpu", *tiny)

    ref = run(cv(clean), cwd=clean)
    assert ref.returncode == 0, ref.stderr[-3000:]
    cases = len(json.loads((clean / "cv" / "summary.json").read_text())["metric_per_case"])

    def cv_done(ws: Path) -> str | None:
        summary = json.loads((ws / "cv" / "summary.json").read_text())
        oof = sorted((ws / "cv" / "oof").glob("*.nii.gz"))
        if not summary["crossval"]["complete"] or len(oof) != cases:
            return f"complete={summary['crossval']['complete']}, {len(oof)} of {cases} cases"
        return None

    def select(ws: Path) -> list[str]:
        return segkit("select", clean / "cv", f"out={ws / 'selection'}")

    ref = run(select(clean), cwd=clean)
    assert ref.returncode == 0, ref.stderr[-3000:]
    decision = json.loads((clean / "selection" / "decision.json").read_text())

    def select_done(ws: Path) -> str | None:
        got = json.loads((ws / "selection" / "decision.json").read_text())
        same = {k: v for k, v in got.items() if k != "configurations"}  # paths relative to out
        same_ref = {k: v for k, v in decision.items() if k != "configurations"}
        return None if same == same_ref else "decision.json differs from the clean run's"

    return {
        "predict": Job(
            "predict", predict, predict, lambda ws: [ws / "pred"], predict_done,
            limits=(256, KB, 4 * KB, 16 * KB, 64 * KB),
        ),
        "train": Job(
            "train", train, lambda ws: train(ws, "resume=true"),
            lambda ws: [ws / "run", ws / "cache"], train_done,
            limits=(8 * KB, 16 * KB, 64 * KB, 150 * KB, 400 * KB),
        ),
        "cv": Job(
            "cv", cv, cv, lambda ws: [ws / "cv"], cv_done,
            limits=(16 * KB, 64 * KB, 400 * KB),
            where=("segkit.cli", "segkit.crossval.launch"),
        ),
        "select": Job(
            "select", select, select, lambda ws: [ws / "selection"], select_done,
            limits=(256, 2 * KB),
        ),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=8, help="kill points per command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="train,predict,cv,select", help="commands, a,b,...")
    parser.add_argument("--no-disk-full", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.time()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="segkit-faults-") as tmp:
        base = Path(tmp)
        jobs = make_jobs(base)
        tallies = {}
        for name in args.only.split(","):
            tally = tallies[name] = Tally()
            began = time.time()
            if not args.no_disk_full:
                disk_full(jobs[name], base, tally)
            kills(jobs[name], base, tally, count=args.kills, rng=rng)
            tally.seconds = time.time() - began
            _print(name, tally)
    total = Tally()
    for t in tallies.values():
        for key, value in vars(t).items():
            setattr(total, key, getattr(total, key) + value)
    print(f"\n{platform.node()}: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"seed {args.seed}; {time.time() - start:.0f} s in all")  # fmt: skip
    _print("all", total)
    bad = total.bad_exits or total.corrupt or total.not_resumed
    sys.exit(1 if bad else 0)


def _print(name: str, t: Tally) -> None:
    print(
        f"{name:8s} runs {t.runs:3d} | disk full: {t.refused} refused in one line, "
        f"{t.finished_anyway} finished | kills {t.kills} at {t.points} points "
        f"({t.not_reached} past the end) | bad exits {len(t.bad_exits)} | corrupt files "
        f"{len(t.corrupt)} | resumed {t.resumed}/{t.runs} | {t.temporaries} temporaries left "
        f"| {t.seconds:.0f} s",
        flush=True,
    )
    for line in (*t.bad_exits, *t.corrupt, *t.not_resumed):
        print(f"    {line}", flush=True)


if __name__ == "__main__":
    main()
