"""Real CVs shared by the crossval tests: a 3-fold CV of two configurations on a 6-case
demo, and a 2-fold CV on the 4-case region demo (BraTS-like, one sigmoid output per region).

Each ``segkit cv`` trains its folds through ``train.py -m`` for two steps each, then
predicts and scores the out-of-fold cases in this process; ``segkit select`` then decides
between the two and their ensemble. The first configuration's folds run through
hydra-submitit-launcher's local executor (``launcher=submitit_local``: launcher=slurm's
code path, each job pickled and run by submitit in a process of its own), the second's
through Hydra's basic launcher (one process, one job after another).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.utils import TINY_JOB

TINY = TINY_JOB
CONFIGS = {"plain": ("launcher=submitit_local",), "shallow": ("model.depth=2",)}


@dataclass(frozen=True)
class CVRun:
    data_dir: Path  # paths.data_dir
    root: Path  # the dataset
    cvs: dict[str, Path]  # configuration name -> CV directory
    selection: Path  # the folder of decision.json


def run_segkit(*argv: str) -> int:
    from segkit.cli import main

    return main([str(a) for a in argv])


@contextmanager
def one_thread() -> Iterator[None]:
    """OMP_NUM_THREADS=1 for the training processes (submitit runs 3 at once)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = threads


@pytest.fixture(scope="session")
def cv_run(tmp_path_factory: pytest.TempPathFactory) -> CVRun:
    from segkit.data.demo import make_demo

    base = tmp_path_factory.mktemp("cv")
    make_demo(base / "data" / "demo", num_cases=6, seed=0)
    cvs = {}
    with one_thread():
        for name, extra in CONFIGS.items():
            out = base / name
            code = run_segkit(
                "cv", "folds=3", f"out={out}", "device=cpu", *TINY, *extra,
                f"paths.data_dir={base / 'data'}",
            )  # fmt: skip
            assert code == 0
            cvs[name] = out
    selection = base / "selection"
    assert run_segkit("select", *cvs.values(), f"out={selection}") == 0
    return CVRun(base / "data", base / "data" / "demo", cvs, selection)


@pytest.fixture(scope="session")
def region_cv(tmp_path_factory: pytest.TempPathFactory) -> CVRun:
    """A 2-fold CV of one configuration on the region demo, and its selection."""
    from segkit.data.demo import make_demo

    base = tmp_path_factory.mktemp("cv_regions")
    make_demo(base / "data" / "demo_regions", num_cases=4, seed=0, regions=True)
    out = base / "regions"
    with one_thread():
        code = run_segkit(
            "cv", "folds=2", f"out={out}", "device=cpu", "data=demo_regions", *TINY,
            f"paths.data_dir={base / 'data'}",
        )  # fmt: skip
    assert code == 0
    selection = base / "selection"
    assert run_segkit("select", out, f"out={selection}") == 0
    return CVRun(base / "data", base / "data" / "demo_regions", {"regions": out}, selection)
