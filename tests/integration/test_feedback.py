"""Feedback closes the loop, against the real Feast SDK and a real redis-server (ML-100K): events pushed through
Feast's push source change the very next recommendation, land exactly once in the offline event log, and the
online lists equal an independent DuckDB computation over that log. Invalid batches change nothing.

These tests push feedback for users 100-299 only; the other recommender tests read other users."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests
from feast import FeatureStore
from redis import Redis

from feast_autofeat.datasets.base import PREPARED_PART
from feast_autofeat.datasets.movielens import SPEC
from feast_autofeat.feast.writer import OnlineWriteError
from feast_autofeat.features.snapshots import recent_items_table
from feast_autofeat.recommend.feedback import FeedbackError, FeedbackLog, rebuild_history
from feast_autofeat.repo import Repo
from feast_autofeat.testing import free_port
from tests.conftest import NOW, REDIS_YAML, serving

pytestmark = pytest.mark.integration
T = pd.Timestamp(NOW, tz="UTC")


def _decl(repo):
    return Repo(repo, REDIS_YAML).two_tower()


def _log(repo) -> pd.DataFrame:
    return pd.read_parquet(repo / "data" / "interactions")


def _parts(repo) -> list[str]:
    return sorted(p.name for p in (repo / "data" / "interactions").iterdir())


def _online(store, users) -> pd.DataFrame:
    out = store.get_online_features(features=[f"user_recent_items:{f}" for f in
                                              ("recent_items", "recent_times", "seen_items")],
                                    entity_rows={"user_id": list(users)}).to_dict()
    return pd.DataFrame(out).set_index("user_id")


def _co_liked(log: pd.DataFrame, liked: list[int], n: int = 50) -> set[int]:
    """The ``n`` items most co-liked with ``liked`` (cosine over users' positives), computed from the log alone:
    the model-independent yardstick of "more like what the user just did"."""
    pos = log[log.rating >= 4].drop_duplicates(["user_id", "item_id"])
    users, u = np.unique(pos.user_id, return_inverse=True)
    items, i = np.unique(pos.item_id, return_inverse=True)
    x = np.zeros((len(users), len(items)))
    x[u, i] = 1.0
    x /= np.sqrt(np.maximum(x.sum(0), 1.0))
    sim = x.T @ x[:, np.searchsorted(items, liked)]
    score = sim.sum(1)
    score[np.searchsorted(items, liked)] = -np.inf
    return set(items[np.argsort(-score, kind="stable")[:n]].tolist())


def test_feedback_changes_the_next_recommendation(rec_repo, recommender):
    """Users like several films (the genre's most popular ones they had neither seen nor been recommended):
    the genre's share of their top-10 rises, the top-10 moves towards those films' co-liked neighbours (an
    independent computation over the log), the films are never recommended back, and they lead the online
    history the session embedding reads."""
    repo, version = rec_repo
    items = pd.read_parquet(repo / "data" / "items.parquet").set_index("item_id")
    log = _log(repo)
    popular = log[log.rating >= 4].groupby("item_id").size().sort_values(ascending=False, kind="stable")
    rises, genre_rises = [], []
    # 36 users, six per genre: a property of the recommender, not of a dozen draws (the other tests here use
    # users 110, 120-121, 130-136 and 200-239)
    users = [u for u in range(101, 150) if u not in (110, 120, 121, 130, 131, 135, 136)][:36]
    for user, genre in zip(users, ("horror", "sci_fi", "romance", "childrens", "war", "comedy") * 6):
        before = recommender.recommend(user, k=10)
        seen = set(log.item_id[log.user_id == user])
        liked = [int(i) for i in popular.index if items.loc[i, f"genre_{genre}"] == 1 and i not in seen
                 and i not in before.items][:8]
        events = [{"user_id": user, "item_id": i, "event_type": "rating", "rating": 5.0,
                   "event_timestamp": (T - timedelta(minutes=30) + timedelta(seconds=k)).isoformat()}
                  for k, i in enumerate(liked)]
        result = recommender.record_feedback(events)
        assert (result.events, result.positives, result.users) == (8, 8, 1)
        after = recommender.recommend(user, k=10)
        assert after.model_version == version and after.source == "two-tower"
        assert not set(after.items) & set(liked) and not set(after.items) & seen
        assert after.history_items == before.history_items + 8
        stored = _online(recommender.store, [user]).loc[user]
        assert list(stored.recent_items[:8]) == liked[::-1]  # newest first
        near = _co_liked(log, liked)
        rises.append(len(near & set(after.items)) - len(near & set(before.items)))
        genre_rises.append(int(items.loc[after.items, f"genre_{genre}"].sum()
                               - items.loc[before.items, f"genre_{genre}"].sum()))  # films, not a float share
    # the top-10 moves towards the liked films' co-liked neighbours: for at least twice as many users as it moves
    # away, and by at least one film on average
    assert sum(r > 0 for r in rises) > 2 * sum(r < 0 for r in rises) and np.mean(rises) >= 1, rises
    # the liked genre gains films in the top-10 for at least twice as many users as it loses them, and half a film
    # on average (a user who already had the genre can lose some to the liked films' co-liked neighbours)
    assert sum(r > 0 for r in genre_rises) > 2 * sum(r < 0 for r in genre_rises), genre_rises
    assert np.mean(genre_rises) >= 0.5, genre_rises


def test_disliked_items_are_seen_but_not_history(rec_repo, recommender):
    """A low rating is no positive (the session embedding ignores it) but the item is never recommended again."""
    top = recommender.recommend(110, k=5).items
    before = _online(recommender.store, [110]).loc[110]
    recommender.record_feedback([{"user_id": 110, "item_id": i, "event_type": "rating", "rating": 1.0,
                                  "event_timestamp": NOW} for i in top[:3]])
    after = _online(recommender.store, [110]).loc[110]
    assert list(after.recent_items) == list(before.recent_items)
    assert list(after.seen_items[:3]) == sorted(top[:3], reverse=True)  # same time: larger id first
    rec = recommender.recommend(110, k=5)
    assert not set(rec.items) & set(top[:3]) and rec.items[:2] == top[3:5]


@pytest.mark.parametrize("bad, match", [
    ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"rating": None}, r"lack a value.*\['rating'\]"),
    ({"user_id": 99_999}, r"user_id 99999 is unknown to the store \(no user of that id"),
    ({"item_id": 99_999}, r"item_id 99999 is unknown to the store \(no item of that id"),
    ({"user_id": "120"}, r"user_id must be an integer, got str '120'"),
    ({"user_id": 2**70}, r"user_id 1180591620717411303424 is out of range for a 64-bit integer key"),
    ({"event_type": "click"}, r"event_type 'click' is not one of \['rating'\]"),
    ({"rating": 7.0}, r"rating must be a number in \[1, 5\]"),
    ({"event_timestamp": "yesterday"}, r"'yesterday' is not an ISO 8601 time"),
    ({"event_timestamp": 1234567890}, r"1234567890 is not an ISO 8601 time"),
    ({"event_timestamp": "1998-04-24T00:00:00Z"}, r"ahead of the service's clock"),
])
def test_invalid_events_change_nothing(rec_repo, recommender, bad, match):
    repo, _ = rec_repo
    good = {"user_id": 120, "item_id": 50, "event_type": "rating", "rating": 5.0, "event_timestamp": NOW}
    parts, online = _parts(repo), _online(recommender.store, [120, 121])
    batch = [good, {**good, "user_id": 121, **bad}]  # one bad event: the good one is not recorded either
    with pytest.raises(FeedbackError, match=match) as err:
        recommender.record_feedback(batch)
    assert "event 1" in str(err.value) or "field" in str(err.value)
    assert _parts(repo) == parts
    pd.testing.assert_frame_equal(_online(recommender.store, [120, 121]), online)


def test_refused_write_leaves_nothing_behind(rec_repo, rec_redis):
    """Redis refusing writes (out of memory: a real server at maxmemory with noeviction) rejects the whole
    transaction: the already-appended log part is removed and the online row is unchanged."""
    repo, _ = rec_repo
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML)
    log = FeedbackLog(store, _decl(repo), clock=lambda: T)
    client = Redis.from_url(f"redis://{rec_redis.url}")
    parts, online = _parts(repo), _online(store, [130])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        with pytest.raises(OnlineWriteError, match=r"refused an update of view user_recent_items \(command not "
                                                   r"allowed when used memory"):
            log.record([{"user_id": 130, "item_id": 50, "event_type": "rating", "rating": 5.0,
                         "event_timestamp": NOW}])
    finally:
        client.config_set("maxmemory", 0)
    assert _parts(repo) == parts
    pd.testing.assert_frame_equal(_online(store, [130]), online)


def test_concurrent_writers_never_drop_an_update(rec_repo):
    """Two writers (separate FeedbackLogs, as two service processes would be) update the same user; the second
    commits while the first is between its read and its write. The first's transaction aborts and is redone on
    fresh data, so the online lists hold both writers' events, as the log does."""
    repo, _ = rec_repo
    first, second = (FeedbackLog(FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML), _decl(repo),
                                 clock=lambda: T) for _ in range(2))
    event = {"user_id": 135, "event_type": "rating", "rating": 5.0}
    merge, calls = first._merge, []

    def interleaved(*args):
        calls.append(1)
        if len(calls) == 1:  # the other writer commits between our read and our write
            second.record([{**event, "item_id": 60, "event_timestamp": T - timedelta(minutes=2)}])
        return merge(*args)

    first._merge = interleaved
    first.record([{**event, "item_id": 61, "event_timestamp": T - timedelta(minutes=1)}])
    assert len(calls) == 2 and first._rows.attempts == 2
    stored = _online(first.store, [135]).loc[135]
    assert list(stored.recent_items[:2]) == [61, 60] and list(stored.seen_items[:2]) == [61, 60]
    want = recent_items_table(pq.read_table(repo / "data" / "interactions"), SPEC.positive).to_pandas()
    want = want.set_index("user_id")
    assert list(stored.recent_items) == list(want.recent_items[135])


def test_online_cells_are_feasts_own_bytes(rec_repo, rec_redis):
    """The lists feedback writes are byte for byte what Feast's own write_to_online_store writes for them."""
    repo, _ = rec_repo
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML)
    log = FeedbackLog(store, _decl(repo), clock=lambda: T)
    log.record([{"user_id": 136, "item_id": 70, "event_type": "rating", "rating": 5.0, "event_timestamp": NOW}])
    client, key = Redis.from_url(f"redis://{rec_redis.url}"), log._rows._key_bytes(np.array([136]))[0]
    ours = client.hgetall(key)
    row = _online(store, [136]).reset_index()
    store.write_to_online_store("user_recent_items", row.assign(event_timestamp=T + timedelta(hours=1)))
    feasts = client.hgetall(key)
    fields = log._rows.fields[1:]
    assert [ours[f] for f in fields] == [feasts[f] for f in fields]
    assert ours[log._rows.ts_field] != feasts[log._rows.ts_field]


def test_redis_down_is_a_clear_failure_and_writes_nothing(rec_repo, tmp_path):
    """A store whose Redis is not there: the update fails with a clear error and the log part is removed."""
    repo, _ = rec_repo
    os.environ["REDIS_CONNECTION_STRING"], url = f"127.0.0.1:{free_port()}", os.environ["REDIS_CONNECTION_STRING"]
    try:
        store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML)
    finally:
        os.environ["REDIS_CONNECTION_STRING"] = url
    parts = _parts(repo)
    with pytest.raises(Exception, match="(?i)connect"):
        FeedbackLog(store, _decl(repo), clock=lambda: T).record(
            [{"user_id": 131, "item_id": 50, "event_type": "rating", "rating": 5.0, "event_timestamp": NOW}])
    assert _parts(repo) == parts


def test_no_event_lost_under_concurrent_http_clients(rec_repo, rec_redis):
    """8 clients POST 400 events (50 batches, users overlapping across clients) to `feast-autofeat serve`:
    the log holds exactly those 400 once, and the online lists equal DuckDB's recomputation from the log."""
    repo, _ = rec_repo
    before = _log(repo)
    rng = np.random.default_rng(0)
    users = np.arange(200, 240)
    items = pd.read_parquet(repo / "data" / "items.parquet").item_id.to_numpy()
    n = 400
    sent = pd.DataFrame({
        "user_id": rng.choice(users, n), "item_id": rng.choice(items, n), "event_type": "rating",
        "rating": rng.integers(1, 6, n).astype(float),
        "event_timestamp": T - pd.to_timedelta(rng.integers(0, 3600 * 24, n), unit="s"),
    })
    batches = [sent.iloc[i:i + 8] for i in range(0, n, 8)]
    with serving(repo, rec_redis.url) as url:
        def post(batch: pd.DataFrame) -> int:
            events = batch.assign(event_timestamp=batch.event_timestamp.map(pd.Timestamp.isoformat))
            r = requests.post(f"{url}/feedback", json={"events": events.to_dict("records")}, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["events"]

        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(post, batches)) == n
        bad = requests.post(f"{url}/feedback", json={"events": [{"user_id": 200, "item_id": 1}]}, timeout=10)
        assert bad.status_code == 422
        bad = requests.post(f"{url}/feedback", json={"events": [{**sent.iloc[0].to_dict(), "item_id": 99_999,
                                                                  "event_timestamp": NOW}]}, timeout=10)
        assert bad.status_code == 422 and "item_id 99999 is unknown" in bad.json()["detail"]

    log = _log(repo)
    added = log.merge(before, how="left", indicator=True).query("_merge == 'left_only'").drop(columns="_merge")
    assert len(log) == len(before) + n
    key = ["user_id", "item_id", "rating", "event_timestamp"]
    pd.testing.assert_frame_equal(added.sort_values(key, ignore_index=True)[key],
                                  sent.sort_values(key, ignore_index=True)[key], check_dtype=False)
    # online = an independent recomputation over the whole log (DuckDB), for every user the clients touched
    want = recent_items_table(pq.read_table(repo / "data" / "interactions"), SPEC.positive).to_pandas()
    want = want.set_index("user_id").loc[users]
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML)
    got = _online(store, users)
    for u in users:
        assert list(got.recent_items[u]) == list(want.recent_items[u]), u
        assert list(got.recent_times[u]) == list(want.recent_times[u]), u
        assert set(got.seen_items[u]) == set(want.seen_items[u]), u


def test_a_retried_batch_is_recorded_once(rec_repo, rec_redis):
    """Idempotency-Key over HTTP: a batch sent twice is logged once (the second answer says replayed); a batch
    whose request timed out on the client while Redis was frozen, retried once Redis is back, is logged once; an
    exact duplicate event inside one batch is logged once. Counted in the offline log."""
    import signal
    import time

    repo, _ = rec_repo
    items = pd.read_parquet(repo / "data" / "items.parquet").item_id.to_numpy()[:6]

    def event(user: int, item: int, minutes: int) -> dict:
        return {"user_id": user, "item_id": int(item), "event_type": "rating", "rating": 5.0,
                "event_timestamp": (T - pd.Timedelta(minutes=minutes)).isoformat()}

    def logged(user: int) -> int:
        return int((_log(repo).user_id == user).sum())

    before = {u: logged(u) for u in (250, 251, 252)}
    with serving(repo, rec_redis.url, args=("--no-auth", "--store-timeout", "0.3")) as url:
        batch = [event(250, items[0], 5), event(250, items[1], 4)]
        first = requests.post(f"{url}/feedback", json={"events": batch}, headers={"Idempotency-Key": "b-250"},
                              timeout=30).json()
        again = requests.post(f"{url}/feedback", json={"events": batch}, headers={"Idempotency-Key": "b-250"},
                              timeout=30).json()
        assert (first["events"], first["replayed"], again["events"], again["replayed"]) == (2, False, 2, True)
        assert logged(250) == before[250] + 2
        # Redis frozen: the client gives up first; the server's own attempt fails (503) and logs nothing
        os.kill(rec_redis.pid, signal.SIGSTOP)
        try:
            with pytest.raises(requests.Timeout):
                requests.post(f"{url}/feedback", json={"events": [event(251, items[2], 3)]},
                              headers={"Idempotency-Key": "b-251"}, timeout=0.1)
            time.sleep(1.0)  # past the store timeout: the attempt has failed and removed its part
        finally:
            os.kill(rec_redis.pid, signal.SIGCONT)
        assert logged(251) == before[251]
        for _ in range(2):  # the retry records it; a second retry is a replay
            r = requests.post(f"{url}/feedback", json={"events": [event(251, items[2], 3)]},
                              headers={"Idempotency-Key": "b-251"}, timeout=30)
            assert r.status_code == 200 and r.json()["events"] == 1, r.text
        assert logged(251) == before[251] + 1
        # exact duplicates inside one batch: recorded once, and said so
        r = requests.post(f"{url}/feedback", json={"events": [event(252, items[3], 2)] * 3 + [event(252, items[4], 2)]},
                          timeout=30).json()
        assert (r["events"], r["duplicates"], r["replayed"]) == (2, 2, False)
        assert logged(252) == before[252] + 2
        bad = requests.post(f"{url}/feedback", json={"events": [event(252, items[5], 1)]},
                            headers={"Idempotency-Key": "not a key!"}, timeout=30)
        assert bad.status_code == 422 and "Idempotency-Key" in bad.text and "not a key" not in bad.text
    assert logged(252) == before[252] + 2


def test_rebuild_history_from_the_log(rec_repo):
    """The log is the source of truth: the prepared table recomputed from it includes every feedback event."""
    repo, _ = rec_repo
    path = rebuild_history(FeatureStore(repo_path=str(repo)), _decl(repo))
    table = pd.read_parquet(path).set_index("user_id")
    log = _log(repo)
    feedback = log.merge(pd.read_parquet(repo / "data" / "interactions" / PREPARED_PART), how="left",
                         indicator=True).query("_merge == 'left_only'")
    assert len(feedback) > 0
    for user, rows in feedback.groupby("user_id"):
        assert set(rows.item_id) <= set(table.seen_items[user])
