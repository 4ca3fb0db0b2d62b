"""Shared fixtures: one synthetic demo dataset per test session, and the real config shrunk."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``paths.data_dir`` holding the demo dataset (``demo/``), made once."""
    from segkit.data.demo import make_demo

    data_dir = tmp_path_factory.mktemp("data")
    make_demo(data_dir / "demo", num_cases=8, seed=0)
    return data_dir
