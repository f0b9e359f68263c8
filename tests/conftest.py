"""Shared fixtures: real data, a real redis-server, prepared and applied feature repos in tmp dirs.

Nothing here is skipped: a missing binary or dataset fails with a message saying what to install.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from feast_autofeat.errors import AutofeatError
from feast_autofeat.testing import RedisServer

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


def make_redis_server(workdir: Path, extra_args: tuple[str, ...] = ()) -> RedisServer:
    try:
        return RedisServer(workdir, extra_args)
    except AutofeatError as exc:  # a missing binary fails the test with the install hint, never skips it
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = make_redis_server(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_db(redis_server):
    """The session's redis-server, emptied for this test (tests share the project name and entity ids)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server


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
