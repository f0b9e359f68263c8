"""Shared fixtures: real data, a real redis-server, prepared and applied feature repos in tmp dirs.

Nothing here is skipped: a missing binary or dataset fails with a message saying what to install.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO_TEMPLATE = ROOT / "feature_repo"
ML100K_ENV = "AUTOFEAT_ML100K_DIR"


def ml100k_path() -> Path:
    return Path(os.environ.get(ML100K_ENV) or ROOT.parent / "shared" / "data" / "ml-100k")


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = ml100k_path()
    if not (path / "u.data").is_file():
        pytest.fail(f"MovieLens 100K not found at {path}: download ml-100k from "
                    f"https://grouplens.org/datasets/movielens/100k/ and set {ML100K_ENV} to its folder.")
    return path


def copy_repo(dest: Path) -> Path:
    """A fresh copy of feature_repo/ (definitions and YAML only, no data or registry)."""
    ignore = shutil.ignore_patterns("data", "store", "__pycache__", "data.*", "models", "embeddings.json")
    shutil.copytree(REPO_TEMPLATE, dest, ignore=ignore)
    return dest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on a free loopback port, owned by the test session."""

    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = ()):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found: install it (`apt-get install -y redis-server`, or run .ci/setup).")
        self.binary, self.workdir, self.extra_args = binary, workdir, list(extra_args)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "yes", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ml_repo(tmp_path_factory, ml100k_dir) -> Path:
    """feature_repo/ copied to a tmp dir and prepared from ML-100K (not applied)."""
    from feast_autofeat.prepare import prepare

    repo = copy_repo(tmp_path_factory.mktemp("ml") / "feature_repo")
    prepare("movielens-100k", repo, raw_dir=ml100k_dir)
    return repo


@pytest.fixture
def fresh_repo(tmp_path) -> Path:
    """An unprepared copy of feature_repo/."""
    return copy_repo(tmp_path / "feature_repo")


@pytest.fixture
def ml_repo_copy(ml_repo, tmp_path) -> Path:
    """A private copy of the prepared ML-100K repo (data included), free to apply and materialize."""
    repo = copy_repo(tmp_path / "feature_repo")
    shutil.copytree(ml_repo / "data", repo / "data")
    return repo


@pytest.fixture(scope="session")
def ml_store(ml_repo):
    """The ML-100K repo after a real `feast apply` (SQLite online store); a FeatureStore on it."""
    from feast import FeatureStore

    from feast_autofeat.quickstart import run_feast

    run_feast(ml_repo, "apply", capture=True)
    return FeatureStore(repo_path=str(ml_repo))
