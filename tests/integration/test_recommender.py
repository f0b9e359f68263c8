"""The bundled two-tower recommender end to end on ML-100K with the real Feast CLI and a real redis-server:
encoders trained, deployed and backfilled; a two-tower trained from a point-in-time training set; its item
vectors materialized by `feast materialize`; recommendations served from Redis (in process and over HTTP) and
checked against a brute-force scoring computed independently (offline features, the model's own vectors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import requests
from feast import FeatureStore

from feast_autofeat.datasets.base import PREPARED_PART
from feast_autofeat.models.base import SchemaError
from feast_autofeat.models.two_tower import TwoTower
from feast_autofeat.recommend.data import query_features, query_frame
from feast_autofeat.recommend.recommender import Recommender
from feast_autofeat.repo import Repo
from tests.conftest import NOW, REDIS_YAML, serving

pytestmark = pytest.mark.integration


def brute_force(repo, version: str, users, histories, k: int, exclude=None):
    """Top-k by scoring every item with the model's own candidate vectors (not the materialized ones), query
    features from the OFFLINE store as of the materialization time (not Redis), history items (and
    ``exclude``, per user) excluded."""
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML)  # its offline store: DuckDB
    model = TwoTower.load(repo / "models", version)
    rows = pd.DataFrame({"user_id": users, "event_timestamp": pd.Timestamp(NOW, tz="UTC"),
                         "recent_items": histories})
    # the model's pinned encoder versions, through Feast's offline store (the session embedding by its
    # on-demand view there; serving computes it in-process)
    decl = Repo(repo, REDIS_YAML).two_tower()
    frame = query_frame(store, rows, query_features(store, decl, model.saved_config_["encoders"]))
    items = model.search_item_vectors(model.item_vectors(), model.item_ids_)  # + the category blocks, if on
    scores = model.search_query_vectors(frame) @ items.T
    for row, items in enumerate(histories):
        drop = set(items) | set(exclude[row] if exclude is not None else ())
        scores[row, model.item_positions([i for i in drop if i in set(model.item_ids_)])] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return model.item_ids_[top], np.take_along_axis(scores, top, axis=1)


def test_recommendations_equal_brute_force(rec_repo, recommender):
    repo, version = rec_repo
    stored = pd.read_parquet(repo / "data" / "user_recent_items.parquet").set_index("user_id")
    users = [1, 7, 50, 405, 655]
    histories = [list(stored.recent_items.loc[u]) for u in users]
    seen = [list(stored.seen_items.loc[u]) for u in users]  # every rated film, liked or not
    want_ids, want_scores = brute_force(repo, version, users, histories, 10, exclude=seen)
    for row, user in enumerate(users):
        rec = recommender.recommend(user, k=10)
        assert rec.source == "two-tower" and rec.model_version == version
        assert rec.history_items == len(set(seen[row]) | set(histories[row])) > len(histories[row])
        np.testing.assert_allclose(rec.scores, want_scores[row], atol=1e-4)
        assert rec.items == want_ids[row].tolist()
        assert not set(rec.items) & set(seen[row])  # already-seen items never come back


def test_recent_items_override_unknown_user_and_bad_input(rec_repo, recommender):
    repo, version = rec_repo
    # a request's own recent items replace the stored history: excluded, and they change the result
    base = recommender.recommend(1, k=20)
    session = base.items[:3]
    rec = recommender.recommend(1, k=20, recent_items=session)
    assert not set(rec.items) & set(session) and rec.history_items == 3
    want_ids, _ = brute_force(repo, version, [1], [session], 20)
    assert rec.items == want_ids[0].tolist()
    # unknown user, no history: the documented popularity fallback (most positive interactions, offline, up to
    # the manifest's end: the prepared events, as feedback logged since counts only after a refresh)
    ev = pd.read_parquet(repo / "data" / "interactions" / PREPARED_PART)
    first = ev[ev.rating >= 4].groupby(["user_id", "item_id"]).size().reset_index()
    popular = first.groupby("item_id").size().sort_values(ascending=False, kind="stable")
    fallback = recommender.recommend(999_999, k=5)
    assert fallback.source == "popularity" and fallback.items == popular.index[:5].tolist()
    assert fallback.scores == popular.iloc[:5].astype(float).tolist()
    # unknown user with a session: the two-tower with the unknown-user row, not the fallback
    cold = recommender.recommend(999_999, k=5, recent_items=[50, 181])
    assert cold.source == "two-tower" and not {50, 181} & set(cold.items)
    for bad, match in (({"k": 0}, "k must be between"), ({"k": 10_000}, "k must be between"),
                       ({"k": 2.5}, "k must be an integer"), ({"recent_items": "50,181"}, "list of item ids"),
                       ({"recent_items": [50, "x"]}, "must be an integer")):
        with pytest.raises(SchemaError, match=match):
            recommender.recommend(1, **bad)
    with pytest.raises(SchemaError, match="user_id must be an integer"):
        recommender.recommend("1")


def test_online_read_equals_get_online_features(rec_repo, rec_redis, recommender):
    """The recommender's Redis read (one HMGET of Feast's layout) returns exactly what Feast's
    get_online_features(...).to_dict() returns: known and unknown users, a user whose behaviour row is missing,
    values and event timestamps; recommendations through either read are identical; a SQLite store gets Feast's
    own read."""
    import redis

    from feast_autofeat.recommend.online import FeastRead, RedisRead, online_reader

    repo, _ = rec_repo
    b = recommender._bundle
    assert isinstance(b.read, RedisRead)
    refs = b.features.stored_refs + recommender.history_refs
    ours, feast = RedisRead(recommender.store, refs, timestamps=True), FeastRead(recommender.store, refs,
                                                                                 timestamps=True)
    users = [1, 7, 50, 405, 655, 943, 0, 999_999]
    for user in users:
        got, want = ours(user), feast(user)
        assert got == want, user
    assert any(v is not None for k, v in ours(7).items() if k.startswith("user_behaviour__"))
    assert all(v is None for k, v in ours(999_999).items() if k != "user_id" and not k.endswith("__ts"))
    # one view's row gone from a user's hash (the other views stay): both reads give that view's nulls
    host, port = rec_redis.url.split(":")
    client = redis.Redis(host=host, port=int(port))
    key, user = ours.key(942), 942
    fv_name, names, start, _ = next(v for v in ours.views if v[0] == "user_behaviour")
    fields = ours.fields[start:start + len(names)]
    saved = dict(zip(fields, client.hmget(key, fields)))
    try:
        assert client.hdel(key, *fields) == len(fields)
        got, want = ours(user), feast(user)
        assert got == want
        assert got["user_behaviour__events_30d"] is None and got["user_behaviour__events_30d__ts"] == 0
        assert got["user_profile__age"] is not None
    finally:
        client.hset(key, mapping=saved)
        client.close()
    # both built now, on one store: the popularity fallback counts the log as it is at start-up (feedback tests
    # add to it), and two stores taking turns thrash Feast's feature-resolution cache
    via_redis = Recommender(repo, yaml=REDIS_YAML, clock=recommender.clock, online_read="redis")
    via_feast = Recommender(repo, store=via_redis.store, clock=recommender.clock, online_read="feast")
    assert isinstance(via_feast._bundle.read, FeastRead) and isinstance(via_redis._bundle.read, RedisRead)
    for user in (1, 50, 942, 999_999):
        a, c = via_redis.recommend(user, k=10), via_feast.recommend(user, k=10)
        assert (a.items, a.scores, a.source) == (c.items, c.scores, c.source)
    sqlite = FeatureStore(repo_path=str(repo))  # the embedded default
    assert isinstance(online_reader(sqlite, refs), FeastRead)
    with pytest.raises(ValueError, match="needs a Redis online store"):
        online_reader(sqlite, refs, kind="redis")


def test_http_service(rec_repo, rec_redis):
    repo, version = rec_repo
    recommender = Recommender(repo, yaml=REDIS_YAML)  # the server's clock: now (every behaviour row expired)
    with serving(repo, rec_redis.url) as url:
        health = requests.get(f"{url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["model_version"] == version
        got = requests.get(f"{url}/recommend", params={"user_id": 7, "k": 10}, timeout=10).json()
        assert got["items"] == recommender.recommend(7, k=10).items and got["source"] == "two-tower"
        got = requests.get(f"{url}/recommend", params={"user_id": 7, "k": 5, "recent_items": "50,181"},
                           timeout=10).json()
        assert got["items"] == recommender.recommend(7, k=5, recent_items=[50, 181]).items
        bad = requests.get(f"{url}/recommend", params={"user_id": 7, "k": 0}, timeout=10)
        assert bad.status_code == 422 and "k must be between" in bad.json()["detail"]
        bad = requests.get(f"{url}/recommend", params={"user_id": 7, "recent_items": "1,x"}, timeout=10)
        assert bad.status_code == 422 and "each of recent_items must be an integer" in bad.json()["detail"]
        assert requests.get(f"{url}/openapi.json", timeout=10).json()["paths"].keys() >= {
            "/recommend", "/healthz", "/feedback"}
        # concurrent requests are answered together (batching): each answer is still the one its request gets alone
        assert_concurrent_answers(url, recommender)
        batching = requests.get(f"{url}/healthz", timeout=10).json()["batching"]
        assert batching["requests"] > batching["batches"] > 0, batching
    with serving(repo, rec_redis.url, args=("--no-auth", "--workers", "2")) as url:  # two processes, one port
        assert_concurrent_answers(url, recommender)


def assert_concurrent_answers(url: str, recommender: Recommender) -> None:
    """48 requests from 12 threads at once (known users, unknown ones, a request's own history, several k) get
    the answers each gets alone in process."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    asks = [{"user_id": int(u), "k": int(rng.choice([5, 10, 20]))} for u in rng.integers(1, 944, 40)]
    asks += [{"user_id": 999_999, "k": 5}, {"user_id": 999_998, "k": 3, "recent_items": "50,181"},
             {"user_id": 12, "k": 10, "recent_items": "1,2,3"}] * 2 + [{"user_id": 3, "k": 7}] * 2

    def ask(params):
        with requests.Session() as s:
            return s.get(f"{url}/recommend", params=params, timeout=30).json()

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, asks))
    for params, got in zip(asks, answers):
        recent = [int(x) for x in params["recent_items"].split(",")] if "recent_items" in params else None
        want = recommender.recommend(params["user_id"], k=params["k"], recent_items=recent)
        assert (got["items"], got["source"]) == (want.items, want.source), params
        np.testing.assert_allclose(got["scores"], want.scores, atol=1e-5)


def test_a_batch_equals_each_request_alone(recommender):
    """recommend_many (what the service runs for concurrent requests) gives each request what recommend gives it
    alone: known and unknown users, a request's own history, different k, the same user twice."""
    asks = [(1, 10, None), (999_999, 5, None), (7, 20, None), (999_998, 4, [50, 181]), (1, 3, [1, 2]),
            (655, 10, None), (1, 10, None)]
    batch = recommender.recommend_many(asks)
    for (user, k, recent), got in zip(asks, batch):
        want = recommender.recommend(user, k=k, recent_items=recent)
        assert (got.items, got.source, got.history_items, got.user_id) == (
            want.items, want.source, want.history_items, want.user_id)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    with pytest.raises(SchemaError, match="k must be between"):
        recommender.recommend_many([(1, 10, None), (7, 0, None)])


def test_item_item_term_is_served_as_the_model_scores_it(rec_repo, recommender):
    """The two-tower's item-item term fitted on the store's positives and switched on: serving's split index
    (the covered items exact over every dimension, the rest without the block) returns the model's own full
    scoring of each request's query vector, ids and scores; the term changes what some users get."""
    import copy
    from dataclasses import replace

    from feast_autofeat.feast.deployments import view_name
    from feast_autofeat.recommend.data import histories, positive_events
    from feast_autofeat.recommend.index import build_index

    repo, version = rec_repo
    b = recommender._current()
    model = copy.copy(b.model)
    model.metrics_ = dict(model.metrics_)
    events = positive_events(recommender.store, recommender.decl)
    model.fit_item_item(histories(events, np.unique(events.user_id), model.item_ids_), 100.0)
    model.config = replace(model.config, item_item_weight=2.0 * model.config.temperature)
    ids, vectors = recommender._item_vectors(view_name(recommender.name, version))
    items = model.search_item_vectors(vectors, ids)
    on = Recommender(repo, yaml=REDIS_YAML, store=recommender.store, clock=recommender.clock)
    on.swap(replace(b, model=model, index=build_index(ids, items, tail=model.item_item_dims())))
    assert on.index.kind.startswith("exact + exact over") and 0 < len(on.index.side) < len(ids)
    changed = 0
    for user in [1, 7, 50, 405, 655, 888]:
        got = on.recommend(user, k=10)
        vector, seen = on.query(user)
        scores = items @ vector
        scores[np.isin(ids, list(seen))] = -np.inf
        top = np.argsort(-scores, kind="stable")[:10]
        assert got.items == ids[top].tolist() and got.source == "two-tower"
        np.testing.assert_allclose(got.scores, scores[top], atol=1e-4)
        changed += got.items != recommender.recommend(user, k=10).items
    assert changed >= 3


def test_gan_augmentation_adds_nearest_synthetic_behaviour_for_sparse_users(rec_repo):
    """GAN augmentation on a real training set: only sparse users' rows are copied; a copy keeps its row's
    user, item, time, history and profile, takes its behaviour from the GAN sample nearest to the row (checked
    by a brute-force search of the same sample pool), and carries DAE / critic vectors computed by those
    models from its own inputs; a fit with it on records what it added."""
    from feast_autofeat.models.dae import DAE
    from feast_autofeat.models.gan import TabularGAN
    from feast_autofeat.recommend.augment import augment_rows
    from feast_autofeat.recommend.data import positive_events
    from feast_autofeat.recommend.train import TrainingSet

    repo, _ = rec_repo
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML)
    decl = Repo(repo, REDIS_YAML).two_tower()
    events = positive_events(store, decl)
    data = TrainingSet.build(store, decl, events[events.user_id <= 120])
    frame, enc = data.frame, data.features.encoders
    sizes = frame.groupby("user_id").size()
    sparse_users = sizes.index[sizes <= 20]
    assert 0 < len(sparse_users) < len(sizes)
    out, report = augment_rows(frame, decl, enc, data.root, copies=2, max_events=20, pool=3000, seed=5)
    src = np.flatnonzero(frame.user_id.isin(sparse_users).to_numpy())
    assert report["rows_added"] == 2 * len(src) and len(out) == len(frame) + 2 * len(src)
    assert report["sparse_users"] == len(sparse_users)
    pd.testing.assert_frame_equal(out.iloc[:len(frame)], frame)  # the real rows, untouched
    synth, origin = out.iloc[len(frame):].reset_index(drop=True), frame.iloc[np.repeat(src, 2)].reset_index(drop=True)
    behaviour = [c for c in frame.columns if c.startswith("user_behaviour__")]
    kept = ["user_id", "item_id", "event_timestamp"] + [c for c in frame.columns if c.startswith("user_profile__")]
    pd.testing.assert_frame_equal(synth[kept], origin[kept])
    assert all(list(a) == list(b) for a, b in zip(synth.recent_items, origin.recent_items))
    # behaviour = the decoded pool samples nearest to each real row, by brute force over the same pool
    gan = TabularGAN.load(data.root, enc["user_gan_critic"])
    cols = gan.preprocessor_.columns
    to_frame = {c: next(f for f in frame.columns if f.endswith(f"__{c}") and not f.startswith("user_dae"))
                for c in cols}
    pool = gan.sample_matrix(3000, seed=5)
    real = gan.preprocessor_.transform(frame.iloc[src][list(to_frame.values())].set_axis(cols, axis=1))
    d = ((real[:, None, :].astype(np.float64) - pool[None, :, :]) ** 2).sum(-1)
    want = gan.inverse_transform(pool[np.argsort(d, axis=1, kind="stable")[:, :2].reshape(-1)])
    for c in cols:
        if to_frame[c] in behaviour:
            np.testing.assert_allclose(synth[to_frame[c]].to_numpy(float), want[c].to_numpy(float), atol=1e-6)
    assert (synth[behaviour].to_numpy(float) != origin[behaviour].fillna(-1).to_numpy(float)).any(axis=1).mean() > 0.5
    # learned vectors recomputed from the synthetic inputs by the models themselves
    inputs = synth[list(to_frame.values())].set_axis(cols, axis=1)
    critic = np.stack(synth["user_gan_critic__embedding"].to_numpy())
    np.testing.assert_allclose(critic, gan.transform(inputs), atol=1e-5)
    dae = DAE.load(data.root, enc["user_dae"])
    dae_in = synth[[to_frame[c] for c in dae.preprocessor_.columns]].set_axis(dae.preprocessor_.columns, axis=1)
    np.testing.assert_allclose(np.stack(synth["user_dae__embedding"].to_numpy()), dae.transform(dae_in), atol=1e-5)
    real_inputs = origin[list(to_frame.values())].set_axis(cols, axis=1)
    assert np.abs(critic - gan.transform(real_inputs)).max(axis=1).mean() > 1e-3  # synthetic, not the real row's
    model = data.fit(data.config(gan_augment=1, epochs=1), tune=False, progress=False)
    assert model.metrics_["gan_augmentation"]["rows_added"] == len(src)
    assert model.config.gan_augment == 1


def test_gate_keeps_a_learned_embedding_only_where_it_earns(rec_repo):
    """The two-tower's gate on a real training set: every learned embedding gets a paired figure on the inner
    validation users; it is kept exactly when the gain exceeds its standard error times the threshold; the model
    reads exactly the kept ones; one figure is recomputed independently (the ablated fit again, same seed)."""
    from feast_autofeat.evaluation import mean_se
    from feast_autofeat.recommend.data import positive_events
    from feast_autofeat.recommend.train import GATE_Z, TrainingSet, _per_user_recall, _row_positions

    repo, _ = rec_repo
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / REDIS_YAML)
    decl = Repo(repo, REDIS_YAML).two_tower()
    events = positive_events(store, decl)
    data = TrainingSet.build(store, decl, events[events.user_id <= 400])
    config = data.config(epochs=2)
    model = data.fit(config, gate=True, progress=False)
    gate = model.metrics_["gate"]
    assert set(gate) == set(decl.learned) == {"user_dae", "user_gan_critic", "session_multvae"}
    for name, g in gate.items():
        assert g["kept"] == (g["gain_recall@20"] > GATE_Z * g["se"]), (name, g)
        assert g["users"] == int((data.valid[1].lengths > 0).sum()) > 50
        assert data.reads(model.config, name) == g["kept"], name
    # an independent recomputation of one group's figure: the full and the ablated tuning fits, paired
    inner = data.frame.iloc[_row_positions(data.events, data.inner.history)]
    full = data._tune(config, inner, progress=False)
    ablated = data._tune(data.without(config, "user_dae"), inner, progress=False)
    diff = mean_se(_per_user_recall(full, data.valid) - _per_user_recall(ablated, data.valid))
    assert abs(diff["mean"] - gate["user_dae"]["gain_recall@20"]) < 1e-9
    assert abs(diff["se"] - gate["user_dae"]["se"]) < 1e-9
    # the item-item term's L2 and weight: the best of their grids on the same validation, in the version
    l2s, weights = model.metrics_["item_item_l2_grid"], model.metrics_["item_item_weight_grid"]
    assert len(l2s) == 5 and len(weights) == 9
    assert model.config.item_item_l2 == max(l2s, key=lambda v: (l2s[v], v))
    assert model.config.item_item_weight == max(weights, key=lambda w: (weights[w], -w))
    # new users' own weight: the best of its grid on the inner cut of held-out users
    assert data.cold_valid is not None and model.metrics_["inner_cold_users"] > 0
    cold = model.metrics_["cold_item_item_weight_grid"]
    assert len(cold) == 9 and model.config.cold_item_item_weight == max(cold, key=lambda w: (cold[w], -w))
