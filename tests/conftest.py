"""Shared fixtures: one synthetic demo dataset per test session, and the real config shrunk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist (pyproject's addopts) runs one worker per core: one thread each, in the
    # worker and in the processes its tests start, so workers do not oversubscribe the cores
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``paths.data_dir`` holding the demo dataset (``demo/``), made once."""
    from segkit.data.demo import make_demo

    data_dir = tmp_path_factory.mktemp("data")
    make_demo(data_dir / "demo", num_cases=8, seed=0)
    return data_dir
