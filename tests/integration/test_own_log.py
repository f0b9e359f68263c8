"""Bring your own log, end to end: ML-100K's ratings rewritten as a generic CSV (string ids `u42` / `i7`, other
column names, epoch seconds, no users or items file) -> `feast-autofeat prepare` -> `train` every embedding the
bundled repo declares and its two-tower (the CLI, as a user types it) -> `feast materialize` into a real Redis
and into SQLite -> `serve`: `/recommend?user_id=u42` answers with the log's own ids, `/feedback` for a string id
changes the next recommendation. String keys are checked online (Redis fast path and SQLite) and in the
snapshots against the model's own output."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import requests
from feast import FeatureStore

from feast_autofeat.datasets.base import load_manifest
from feast_autofeat.feast.deployments import Deployments
from feast_autofeat.models.dae import DAE
from feast_autofeat.repo import run_feast
from tests.conftest import REDIS_YAML, copy_repo, make_redis_server, serving

pytestmark = pytest.mark.integration
EPOCHS = {"user_dae": 2, "user_gan_critic": 2, "session_multvae": 3, "item_two_tower": 3}


def autofeat(*args: str, env: dict) -> str:
    """`feast-autofeat ARGS` in a subprocess, as a user types it; its output (the test fails with it if it fails)."""
    proc = subprocess.run([sys.executable, "-m", "feast_autofeat.cli", *args], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"feast-autofeat {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_bring_your_own_log_with_string_ids(tmp_path, ml100k_dir, monkeypatch):
    raw = pd.read_csv(ml100k_dir / "u.data", sep="\t", names=["user", "item", "rating", "unix"])
    log = pd.DataFrame({"visitor": "u" + raw.user.astype(str), "movie": "i" + raw.item.astype(str),
                        "score": raw.rating, "time": raw.unix})
    log.to_csv(tmp_path / "ratings.csv", index=False)
    repo = copy_repo(tmp_path / "feature_repo")
    server = make_redis_server(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    env = {**os.environ, "REDIS_CONNECTION_STRING": server.url, "PYTHONUNBUFFERED": "1"}
    try:
        out = autofeat("prepare", "--repo", str(repo), "--interactions", str(tmp_path / "ratings.csv"),
                       "--columns", "user_id=visitor,item_id=movie,event_timestamp=time,rating=score", env=env)
        assert "ids: users string, items string; positive: rating >= 4" in out
        manifest = load_manifest(repo / "data")
        run_feast(repo, "apply", yaml=REDIS_YAML, env=env, capture=True)
        common = ["--repo", str(repo), "-f", REDIS_YAML]
        for name in ("user_dae", "user_gan_critic", "session_multvae"):
            assert f"trained {name}" in autofeat("train", name, "--epochs", str(EPOCHS[name]), *common, env=env)
            autofeat("deploy", name, "--live", *common, env=env)
        lo, hi = manifest.time_range[0][:10], manifest.snapshot_range[1][:10]
        for name in ("user_dae", "user_gan_critic"):
            autofeat("backfill", name, "--start", lo, "--end", hi, *common, env=env)
        out = autofeat("train", "item_two_tower", "--epochs", str(EPOCHS["item_two_tower"]), *common, env=env)
        assert "note: session_multvae:" in out  # the gate's verdict on each learned embedding is printed
        autofeat("deploy", "item_two_tower", "--live", *common, env=env)
        start, end = manifest.materialize_window()
        run_feast(repo, "materialize", start, end, yaml=REDIS_YAML, env=env, capture=True)

        # string keys online (Redis fast path) and in the snapshot: the model's own output
        dae = Deployments(repo).get("user_dae").live
        snap = pd.read_parquet(repo / "data" / "embeddings" / "user_dae" / dae / f"at={_stamp(end)}.parquet")
        snap = snap.sort_values("user_id", ignore_index=True)
        assert len(snap) == 943 and snap.user_id.str.startswith("u").all()
        monkeypatch.setenv("REDIS_CONNECTION_STRING", server.url)  # this test's Redis, for this test only
        redis_store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML)
        users = ["u42", "u1", "u943"]
        got = redis_store.get_online_features(features=[f"user_dae__{dae}:embedding"],
                                              entity_rows=[{"user_id": u} for u in users]).to_dict()
        want = np.stack(snap.set_index("user_id").loc[users].embedding.to_numpy())
        np.testing.assert_allclose(np.array(got["embedding"]), want, atol=1e-6)
        inputs = _inputs(redis_store, users, end)
        np.testing.assert_allclose(want, DAE.load(repo / "models", dae).transform(inputs), atol=1e-5)
        # ... and in SQLite (the embedded default), read back online and point in time
        run_feast(repo, "apply", env=env, capture=True)
        run_feast(repo, "materialize", "--views", f"user_dae__{dae}", start, end, env=env, capture=True)
        sqlite = FeatureStore(repo_path=str(repo))
        got = sqlite.get_online_features(features=[f"user_dae__{dae}:embedding"],
                                         entity_rows=[{"user_id": u} for u in users + ["nobody"]]).to_dict()
        np.testing.assert_allclose(np.array(got["embedding"][:3]), want, atol=1e-6)
        assert got["embedding"][3] is None
        at = pd.Timestamp(datetime.fromisoformat(end).replace(tzinfo=timezone.utc))
        hist = sqlite.get_historical_features(entity_df=pd.DataFrame({"user_id": users, "event_timestamp": at}),
                                              features=[f"user_dae__{dae}:embedding"]).to_df()
        hist = hist.set_index("user_id").loc[users]
        np.testing.assert_allclose(np.stack(hist.embedding.to_numpy()), want, atol=1e-6)

        # serving: the log's own ids in and out, feedback for a string id
        with serving(repo, server.url) as url:
            before = requests.get(f"{url}/recommend", params={"user_id": "u42", "k": 10}, timeout=30)
            assert before.status_code == 200, before.text
            before = before.json()
            seen = set(log.movie[log.visitor == "u42"])
            assert before["source"] == "two-tower" and before["user_id"] == "u42"
            assert len(before["items"]) == 10 and all(i.startswith("i") for i in before["items"])
            assert not set(before["items"]) & seen
            fallback = requests.get(f"{url}/recommend", params={"user_id": "nobody", "k": 5}, timeout=30).json()
            popular = log[log.score >= 4].groupby("movie").size().sort_values(ascending=False, kind="stable")
            assert fallback["source"] == "popularity" and fallback["items"] == popular.index[:5].tolist()
            session = requests.get(f"{url}/recommend", params={"user_id": "nobody", "k": 5,
                                                               "recent_items": "i50,i181"}, timeout=30).json()
            assert session["source"] == "two-tower" and not {"i50", "i181"} & set(session["items"])
            bought = before["items"][:3]
            now = datetime.now(timezone.utc)
            events = [{"user_id": "u42", "item_id": i, "event_type": "interaction", "rating": 5.0,
                       "event_timestamp": (now - timedelta(minutes=5 - k)).isoformat()} for k, i in enumerate(bought)]
            r = requests.post(f"{url}/feedback", json={"events": events}, timeout=30)
            assert r.status_code == 200 and r.json()["events"] == 3 and r.json()["positives"] == 3, r.text
            after = requests.get(f"{url}/recommend", params={"user_id": "u42", "k": 10}, timeout=30).json()
            assert not set(after["items"]) & set(bought) and after["items"] != before["items"]
            assert after["history_items"] == before["history_items"] + 3
            bad = requests.post(f"{url}/feedback", json={"events": [{**events[0], "user_id": 42}]}, timeout=30)
            assert bad.status_code == 422 and "user_id must be a string" in bad.json()["detail"]
            bad = requests.post(f"{url}/feedback", json={"events": [{**events[0], "item_id": "i99999"}]}, timeout=30)
            assert bad.status_code == 422 and "item_id i99999 is unknown" in bad.json()["detail"]
        # the feedback is in the log, under the log's own columns and ids
        part = [p for p in (repo / "data" / "interactions").glob("feedback-*.parquet")]
        assert len(part) == 1 and pd.read_parquet(part[0]).item_id.tolist() == bought
    finally:
        server.stop()


def _stamp(end: str) -> str:
    return datetime.fromisoformat(end).strftime("%Y%m%dT%H%M%S%f")


def _inputs(store, users: list[str], end: str) -> pd.DataFrame:
    """The DAE's inputs for ``users`` as of ``end``, by Feast's point-in-time join (the engine's own read is
    checked against it in test_embedding_views)."""
    from feast_autofeat.repo import Repo

    refs = Repo(store.repo_path).declaration("user_dae").refs
    at = pd.Timestamp(datetime.fromisoformat(end).replace(tzinfo=timezone.utc))
    frame = store.get_historical_features(entity_df=pd.DataFrame({"user_id": users, "event_timestamp": at}),
                                          features=refs).to_df()
    return frame.set_index("user_id").loc[users].reset_index(drop=True).drop(columns="event_timestamp")
