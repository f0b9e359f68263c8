"""`feast-autofeat serve` as exposed to a network: bearer tokens with read and write scopes, bounded bodies and
batches, error bodies that echo nothing, bounded waits on a frozen Redis, and a /healthz that says degraded when
the online store is gone or empty. A real server process, real Redis (ML-100K repo of conftest's rec_repo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests

from tests.conftest import REDIS_YAML, make_redis_server, serving

pytestmark = pytest.mark.integration
READ, WRITE = "r" * 8 + "read-token-0001", "w" * 8 + "write-token-0001"
TOKENS = {"AUTOFEAT_READ_TOKENS": READ, "AUTOFEAT_WRITE_TOKENS": WRITE}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_scopes_limits_and_quiet_errors(rec_repo, rec_redis):
    repo, version = rec_repo
    log: list[str] = []
    with serving(repo, rec_redis.url, args=("--max-body-bytes", "20000", "--max-events", "5"), env=TOKENS,
                 log=log) as url:
        # /healthz is open; everything else needs a token
        health = requests.get(f"{url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        for path in ("/recommend?user_id=7", "/docs", "/openapi.json"):
            r = requests.get(url + path, timeout=10)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
            assert requests.get(url + path, headers=bearer("not-a-token-of-ours"), timeout=10).status_code == 401
            assert requests.get(url + path, headers=bearer(READ), timeout=10).status_code == 200, path
        got = requests.get(f"{url}/recommend", params={"user_id": 7, "k": 3}, headers=bearer(WRITE), timeout=10)
        assert got.status_code == 200 and got.json()["model_version"] == version  # a write token also reads
        # /feedback needs write: a read token gets 403; a write token gets through to validation (an unknown item)
        event = {"user_id": 7, "item_id": 999_999, "event_type": "rating", "rating": 5,
                 "event_timestamp": "1998-04-22T10:00:00Z"}
        r = requests.post(f"{url}/feedback", json={"events": [event]}, headers=bearer(READ), timeout=10)
        assert r.status_code == 403, r.text
        r = requests.post(f"{url}/feedback", json={"events": [event]}, headers=bearer(WRITE), timeout=10)
        assert r.status_code == 422 and "999999" in r.text and "unknown" in r.text, r.text
        # limits: too many events -> 422 naming the limit; a body over the bound -> 413, with or without a length
        r = requests.post(f"{url}/feedback", json={"events": [event] * 6}, headers=bearer(WRITE), timeout=10)
        assert r.status_code == 422 and "at most 5" in r.json()["detail"], r.text
        big = json.dumps({"events": [event] * 400}).encode()
        assert len(big) > 20000
        r = requests.post(f"{url}/feedback", data=big, headers={**bearer(WRITE), "content-type":
                                                                "application/json"}, timeout=10)
        assert r.status_code == 413 and "20000 bytes" in r.json()["detail"], r.text
        r = requests.post(f"{url}/feedback", data=iter([big[:10000], big[10000:]]),  # chunked: no length
                          headers={**bearer(WRITE), "content-type": "application/json"}, timeout=10)
        assert r.status_code == 413, r.text
        # a 422 names the field and never echoes the input back
        junk = "J" * 5000
        r = requests.post(f"{url}/feedback", json={"events": [{**event, "user_id": [junk]}]},
                          headers=bearer(WRITE), timeout=10)
        assert r.status_code == 422 and junk[:50] not in r.text and len(r.content) < 2000, r.text[:500]
        assert "user_id" in r.text
        r = requests.get(f"{url}/recommend", params={"user_id": junk}, headers=bearer(READ), timeout=10)
        assert r.status_code == 422 and junk[:50] not in r.text, r.text[:500]
        # ids past int64 -> 422 naming the field, on both paths
        r = requests.get(f"{url}/recommend", params={"user_id": str(2**63)}, headers=bearer(READ), timeout=10)
        assert r.status_code == 422 and "user_id" in r.json()["detail"], r.text
        r = requests.post(f"{url}/feedback", json={"events": [{**event, "user_id": 2**70}]},
                          headers=bearer(WRITE), timeout=10)
        assert r.status_code == 422 and "user_id" in r.text and "64-bit" in r.text, r.text
    assert READ not in log[0] and WRITE not in log[0]  # tokens never reach the log


def test_serve_refuses_to_start_without_tokens_and_warns_on_no_auth(rec_repo, rec_redis, tmp_path):
    repo, _ = rec_repo
    env = {k: v for k, v in os.environ.items() if k not in TOKENS}
    cmd = [sys.executable, "-m", "feast_autofeat.cli", "serve", "--repo", str(repo), "-f", REDIS_YAML]
    proc = subprocess.run(cmd, env={**env, "REDIS_CONNECTION_STRING": rec_redis.url}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "AUTOFEAT_READ_TOKENS" in proc.stderr and "--no-auth" in proc.stderr
    short = tmp_path / "tokens.json"
    short.write_text(json.dumps({"read": ["short"], "write": []}))
    proc = subprocess.run(cmd + ["--tokens-file", str(short)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "read token #1 is shorter than 16" in proc.stderr, proc.stderr
    short.write_text(json.dumps({"read": [READ], "admin": [WRITE]}))
    proc = subprocess.run(cmd + ["--tokens-file", str(short)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown field(s) ['admin']" in proc.stderr, proc.stderr
    log: list[str] = []
    with serving(repo, rec_redis.url, log=log) as url:  # --no-auth: open, and said so
        assert requests.get(f"{url}/recommend", params={"user_id": 7}, timeout=10).status_code == 200
    assert "WITHOUT authentication" in log[0]


def test_frozen_or_empty_redis_answers_503_fast_and_healthz_says_degraded(rec_repo, tmp_path):
    """A Redis of its own: frozen (SIGSTOP), requests get 503 within the store timeout and /healthz says degraded
    within its own; thawed, everything answers again. Restarted empty (no persistence), /healthz says degraded
    instead of ok while every user would get the popularity fallback."""
    repo, _ = rec_repo
    (tmp_path / "redis").mkdir()
    server = make_redis_server(tmp_path / "redis")
    server.start()
    try:
        with serving(repo, server.url, args=("--no-auth", "--store-timeout", "0.3")) as url:
            # empty: nothing for the log's most active users
            r = requests.get(f"{url}/healthz", timeout=10)
            assert r.status_code == 503 and r.json()["status"] == "degraded", r.text
            assert "holds nothing" in r.json()["reason"] and server.url not in r.text
            # frozen: bounded waits, then back
            os.kill(server.pid, signal.SIGSTOP)
            try:
                t = time.perf_counter()
                r = requests.get(f"{url}/recommend", params={"user_id": 7}, timeout=10)
                assert r.status_code == 503 and time.perf_counter() - t < 3, r.text
                assert str(server.port) not in r.text and "127.0.0.1" not in r.text
                t = time.perf_counter()
                r = requests.get(f"{url}/healthz", timeout=10)
                assert r.status_code == 503 and r.json()["status"] == "degraded"
                assert time.perf_counter() - t < 2
            finally:
                os.kill(server.pid, signal.SIGCONT)
            time.sleep(0.5)
            r = requests.get(f"{url}/recommend", params={"user_id": 7, "k": 5}, timeout=10)
            assert r.status_code == 200 and r.json()["source"] == "popularity" and len(r.json()["items"]) == 5
    finally:
        server.stop()



def test_serve_refuses_a_damaged_model_at_start(rec_repo, rec_redis):
    """Every model serving calls is loaded and verified at start: a session model edited on disk stops `serve`
    before it listens, naming the file, instead of failing every request with history later."""
    from feast_autofeat.feast.deployments import Deployments

    repo, _ = rec_repo
    version = Deployments(repo).live("session_multvae")
    weights = repo / "models" / "multvae" / version / "weights.safetensors"
    original = weights.read_bytes()
    damaged = bytearray(original)
    damaged[-1] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    try:
        proc = subprocess.run([sys.executable, "-m", "feast_autofeat.cli", "serve", "--repo", str(repo), "-f",
                               REDIS_YAML, "--no-auth", "--port", "1"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "REDIS_CONNECTION_STRING": rec_redis.url})
    finally:
        weights.write_bytes(original)
    assert proc.returncode != 0 and "weights.safetensors" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr



@pytest.fixture(scope="module")
def restored(rec_repo, tmp_path_factory):
    """A copy of the built repo on a Redis of its own that starts empty (a restart without persistence): the
    server's /healthz before, `feast-autofeat refresh --online-only`, the live versions before and after. Yields
    (repo copy, Redis server, what was seen)."""
    import shutil

    from feast_autofeat.feast.deployments import Deployments

    repo, _ = rec_repo
    root = tmp_path_factory.mktemp("restored")
    copy = root / "feature_repo"
    shutil.copytree(repo, copy)
    (root / "redis").mkdir()
    server = make_redis_server(root / "redis")
    server.start()
    seen = {"live_before": {n: Deployments(copy).live(n) for n in ("user_dae", "item_two_tower")}}
    try:
        with serving(copy, server.url) as url:
            seen["health_before"] = requests.get(f"{url}/healthz", timeout=10)
            seen["restore"] = subprocess.run(
                [sys.executable, "-m", "feast_autofeat.cli", "refresh", "--online-only", "--repo", str(copy), "-f",
                 REDIS_YAML], env={**os.environ, "REDIS_CONNECTION_STRING": server.url}, capture_output=True,
                text=True, timeout=900)
            seen["health_after"] = requests.get(f"{url}/healthz", timeout=10)
            seen["user_7"] = requests.get(f"{url}/recommend", params={"user_id": 7}, timeout=10).json()
        seen["live_after"] = {n: Deployments(copy).live(n) for n in seen["live_before"]}
        yield copy, server, seen
    finally:
        server.stop()


def test_refresh_online_only_restores_a_redis_that_lost_its_data(restored):
    """A Redis restarted empty: /healthz says degraded; `feast-autofeat refresh --online-only` rebuilds it from
    the log and the offline store (training nothing), after which /healthz says ok and the online values equal
    the offline data, read independently: each user's latest behaviour snapshot up to the window's end and the
    history lists recomputed from the log; the live embedding is back for the users it covers."""
    from feast import FeatureStore

    from feast_autofeat.datasets.movielens import SPEC
    from feast_autofeat.features.snapshots import recent_items_table

    copy, server, seen = restored
    assert seen["health_before"].status_code == 503 and "holds nothing" in seen["health_before"].text
    proc = seen["restore"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert seen["live_after"] == seen["live_before"]  # nothing trained, nothing moved
    assert seen["health_after"].status_code == 200 and seen["health_after"].json()["status"] == "ok"
    assert seen["user_7"]["source"] == "two-tower"
    summary = json.loads(proc.stdout[proc.stdout.rindex('{\n  "events"'):])
    end = pd.Timestamp(summary["window"][1], tz="UTC")
    dae = seen["live_before"]["user_dae"]
    users = list(range(1, 61))
    refs = [f"user_recent_items:{f}" for f in ("recent_items", "seen_items")] + [
        "user_behaviour:events_30d", f"user_dae__{dae}:embedding"]
    saved = os.environ.get("REDIS_CONNECTION_STRING")
    os.environ["REDIS_CONNECTION_STRING"] = server.url
    try:
        store = FeatureStore(repo_path=str(copy), fs_yaml_file=copy / REDIS_YAML)
        got = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users]).to_dict()
    finally:
        os.environ["REDIS_CONNECTION_STRING"] = saved or ""
    behaviour = pd.read_parquet(copy / "data" / "user_behaviour.parquet")
    behaviour = behaviour[behaviour.event_timestamp <= end].sort_values("event_timestamp")
    latest = behaviour.groupby("user_id").tail(1).set_index("user_id").events_30d
    assert got["events_30d"] == [int(latest[u]) if u in latest.index else None for u in users]
    lists = recent_items_table(pq.read_table(copy / "data" / "interactions"), SPEC.positive).to_pandas()
    lists = lists.set_index("user_id")
    assert sum(v is not None for v in got["recent_items"]) > 50
    def items(value) -> list:
        return [] if value is None else list(value)

    for i, u in enumerate(users):
        want = lists.loc[u] if u in lists.index else None
        assert items(got["recent_items"][i]) == (items(want.recent_items) if want is not None else []), u
        assert set(items(got["seen_items"][i])) == (set(items(want.seen_items)) if want is not None else set()), u
    # the live embedding is back online for the users it covers, one vector of the model's width each
    vectors = [v for v in got["embedding"] if v is not None]
    assert len(vectors) > 50 and len({len(v) for v in vectors}) == 1


def test_fuzzing_the_openapi_schema_finds_no_server_error(restored):
    """schemathesis against the served OpenAPI schema, with a write token, bounded in examples and time, on the
    restored copy (its own log and Redis: fuzzed feedback that happens to be valid lands there): no 5xx, no answer
    slower than 5 s, and the server still answers after."""
    copy, server, _ = restored
    with serving(copy, server.url, args=(), env=TOKENS) as url:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "st"), "run", f"{url}/openapi.json", "--checks",
             "not_a_server_error", "--max-response-time", "5", "-H", f"Authorization: Bearer {WRITE}",
             "--max-examples", "30", "--generation-deterministic", "--request-timeout", "10", "--workers", "1"],
            capture_output=True, text=True, timeout=600, cwd=copy.parent)  # its example store: not in the repo
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
        for path in ("/recommend", "/feedback"):
            assert path in proc.stdout, proc.stdout[-3000:]  # both operations were fuzzed
        health = requests.get(f"{url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
