"""Shared fixtures: real data, a real redis-server, prepared and applied feature repos in tmp dirs.

Nothing here is skipped: a missing binary or dataset fails with a message saying what to install.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
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
def redis_cluster(tmp_path_factory):
    """A real three-node Redis Cluster of its own (``redis-cli --cluster create``), stopped at the end."""
    from feast_autofeat.testing import RedisClusterNodes

    try:
        cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    except AutofeatError as exc:  # a missing binary fails the test with the install hint, never skips it
        pytest.fail(str(exc))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_db(redis_cluster):
    """The session's Redis Cluster, every node emptied for this test."""
    import redis

    for s in redis_cluster.servers:
        with redis.Redis(host="127.0.0.1", port=s.port) as client:
            client.flushall()
    return redis_cluster


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


# ---- the bundled recommender on ML-100K in Redis (shared by the recommender and feedback tests)
REDIS_YAML = "feature_store.redis.yaml"
# an hour after ML-100K's last daily snapshot (1998-04-23 00:00): inside the behaviour view's 1-day TTL, so the
# offline point-in-time read and the online read (Feast applies no TTL online) see the same snapshot
NOW = "1998-04-23T01:00:00"


@contextmanager
def serving(repo: Path, redis_url: str, args: tuple[str, ...] = ("--no-auth",), env: dict | None = None,
            log: list | None = None):
    """`feast-autofeat serve` on the repo in a subprocess (Redis YAML), its base URL once /healthz answers.
    ``args``: more flags (default ``--no-auth``: the tests of what it serves; test_serve_security.py tests tokens);
    ``log``: a list the server's output is appended to when it stops."""
    import subprocess
    import sys
    import time

    import requests

    from feast_autofeat.testing import free_port

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "REDIS_CONNECTION_STRING": redis_url, **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "feast_autofeat.cli", "serve", "--repo", str(repo), "-f",
                             REDIS_YAML, "--port", str(port), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=2)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"server did not start: {proc.stdout.read() if proc.poll() else ''}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if log is not None:
            log.append(proc.stdout.read())


@pytest.fixture(scope="session")
def rec_redis(tmp_path_factory):
    """A redis-server of its own: other tests flush the shared one."""
    server = make_redis_server(tmp_path_factory.mktemp("rec-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rec_repo(ml_repo, tmp_path_factory, rec_redis):
    """ML-100K with small encoders and a two-tower deployed live, everything materialized into Redis.
    Returns (repo, two-tower version). Tests that push feedback use users the others do not read.

    The two-tower keeps every learned group (no gate): serving then reads every kind of learned feature online
    (stored DAE and GAN views, the on-demand session embedding), the most demanding path. The gate itself is
    tested on its own (test_recommender.py)."""
    from feast_autofeat.quickstart import run_feast
    from feast_autofeat.recommend.pipeline import build_recommender

    repo = copy_repo(tmp_path_factory.mktemp("rec") / "feature_repo")
    shutil.copytree(ml_repo / "data", repo / "data")
    os.environ["REDIS_CONNECTION_STRING"] = rec_redis.url
    run_feast(repo, "apply", yaml=REDIS_YAML, capture=True)
    versions = build_recommender(repo, yaml=REDIS_YAML, end=NOW, gate=False,
                                 epochs={"dae": 2, "gan": 2, "multvae": 3, "two_tower": 3})
    return repo, versions["item_two_tower"]


@pytest.fixture(scope="session")
def recommender(rec_repo):
    from datetime import datetime, timezone

    from feast_autofeat.recommend.recommender import Recommender

    repo, _ = rec_repo
    now = datetime.fromisoformat(NOW).replace(tzinfo=timezone.utc)
    return Recommender(repo, yaml=REDIS_YAML, clock=lambda: now)
