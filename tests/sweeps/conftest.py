"""Fixtures: the demo dataset once per session, and tiny real ``train.py -m`` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.utils import TINY_JOB

REPO = Path(__file__).resolve().parents[2]
TINY = TINY_JOB


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory) -> Path:
    """A ``paths.data_dir`` holding a 5-case demo dataset (``<dir>/demo``), made once."""
    from segkit.data.demo import make_demo

    data_dir = tmp_path_factory.mktemp("sweep_data")
    make_demo(data_dir / "demo", num_cases=5, seed=0)
    return data_dir


@pytest.fixture
def train_multirun(demo_data_dir: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Runs ``python train.py -m <TINY> <overrides> hydra.sweep.dir=<sweep_dir>``."""

    def run(sweep_dir: Path, overrides: Sequence[str], timeout: float = 240):
        cmd = [
            sys.executable, str(REPO / "train.py"), "-m", *TINY, *overrides,
            f"paths.data_dir={demo_data_dir}", f"hydra.sweep.dir={sweep_dir}",
        ]  # fmt: skip
        env = {
            **os.environ,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
            "PYTHONWARNINGS": "ignore",
        }
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, (
            f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
        return proc

    return run


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real ``mlflow server`` with a SQLite backend store; yields its tracking URI.

    The server is not waited for: it starts while the test's search starts, and MLflow's
    client retries a refused connection (the search creates its experiment first).
    """
    import socket

    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
           "--artifacts-destination", str(root / "artifacts")]  # fmt: skip
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with (root / "server.log").open("w") as log:
        server = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        yield f"http://127.0.0.1:{port}"
        os.killpg(server.pid, 9)  # the server and its uvicorn worker: a session of their own
        server.wait(timeout=30)
