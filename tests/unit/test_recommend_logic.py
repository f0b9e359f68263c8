"""Pure logic of the recommender: evaluation splits, history lists, the two-tower model, the item indexes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from feast_autofeat.errors import AutofeatError
from feast_autofeat.models.base import SchemaError
from feast_autofeat.models.two_tower import TwoTower, TwoTowerConfig
from feast_autofeat.recommend.data import attach_history, cold_users_cut, histories, per_user_cut
from feast_autofeat.recommend.evaluate import protocol_g, protocol_n
from feast_autofeat.recommend.index import ExactIndex, HnswIndex, build_index
from feast_autofeat.recommend.train import new_items_scores


def events(n_users=30, per_user=12, n_items=50, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        items = rng.choice(n_items, per_user + u % 5, replace=False) + 100
        ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.sort(rng.integers(0, 10**6, len(items))),
                                                                    unit="s")
        rows.append(pd.DataFrame({"user_id": u, "item_id": items, "event_timestamp": ts}))
    return pd.concat(rows, ignore_index=True)


def test_per_user_cut_takes_each_users_last_fifth():
    ev = events()
    cut = per_user_cut(ev, share=0.2)
    for u, g in ev.sort_values(["user_id", "event_timestamp", "item_id"]).groupby("user_id"):
        n_future = max(1, round(0.2 * len(g)))
        assert cut.future[cut.future.user_id == u].item_id.tolist() == g.item_id.tolist()[-n_future:]
        assert cut.history[cut.history.user_id == u].item_id.tolist() == g.item_id.tolist()[:-n_future]
    # the query of each user is at their first target time, with their whole history newest first
    q = cut.queries().set_index("user_id")
    first = cut.future.groupby("user_id").event_timestamp.min()
    assert (q.event_timestamp == first.loc[q.index]).all()
    h = cut.history[cut.history.user_id == 3].sort_values("event_timestamp", ascending=False)
    assert q.loc[3, "recent_items"] == h.item_id.tolist()


def test_cold_users_are_absent_from_training_and_know_five_items():
    ev = events(n_users=200)
    train, cut = cold_users_cut(ev, share=0.1, known=5, seed=1)
    cold = set(cut.history.user_id)
    assert 8 <= len(cold) <= 35 and not cold & set(train.user_id)
    assert (cut.history.groupby("user_id").size() == 5).all()
    for u in list(cold)[:5]:
        g = ev[ev.user_id == u].sort_values(["event_timestamp", "item_id"])
        assert cut.history[cut.history.user_id == u].item_id.tolist() == g.item_id.tolist()[:5]
        assert cut.future[cut.future.user_id == u].item_id.tolist() == g.item_id.tolist()[5:]
    assert len(train) + len(cut.history) + len(cut.future) == len(ev)


def test_global_split_is_one_time_for_everyone():
    ev = events()
    p = protocol_g(ev)
    t = p.cut.future.event_timestamp.min()
    assert p.train_events.event_timestamp.max() < t and (p.cut.history.event_timestamp < t).all()
    assert set(p.cut.future.user_id) <= set(p.train_events.user_id)
    assert abs(len(p.train_events) / len(ev) - 0.8) < 0.01


def test_paired_differences_and_pooled_runs():
    """paired(): each model's per-user difference from each baseline (mean, standard error of the differences);
    pool(): runs' users concatenated, metrics and paired differences over all of them (checked by hand)."""
    from feast_autofeat.recommend.evaluate import paired, pool

    rng = np.random.default_rng(0)

    def run(n, shift):
        base = rng.uniform(0, 1, n)  # how easy each user is: shared by every model
        return {"protocol": "C", "train_events": 10, "test_users": n, "targets": 3 * n, "seconds": 1.0,
                "models": {}, "per_user": {
                    "popularity": {"ndcg@10": base, "recall@20": base},
                    "EASE": {"ndcg@10": base - 0.1, "recall@20": base - 0.1},
                    "two-tower learned": {"ndcg@10": base + shift + rng.normal(0, 0.01, n),
                                          "recall@20": base + shift}}}

    one = run(50, 0.02)
    d = paired(one["per_user"])
    assert set(d) == {"two-tower learned"} and set(d["two-tower learned"]) == {"popularity", "EASE"}
    diff = one["per_user"]["two-tower learned"]["ndcg@10"] - one["per_user"]["popularity"]["ndcg@10"]
    got = d["two-tower learned"]["popularity"]["ndcg@10"]
    assert got["mean"] == pytest.approx(diff.mean()) and got["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(50))
    assert got["se"] < 0.01 < np.std(one["per_user"]["popularity"]["ndcg@10"]) / np.sqrt(50)  # shared noise cancels
    assert d["two-tower learned"]["EASE"]["recall@20"]["mean"] == pytest.approx(0.12)
    two = run(30, 0.04)
    pooled = pool([one, two])
    assert pooled["test_users"] == 80 and pooled["targets"] == 240 and len(pooled["runs"]) == 2
    both = np.concatenate([one["per_user"]["two-tower learned"]["ndcg@10"],
                           two["per_user"]["two-tower learned"]["ndcg@10"]])
    row = pooled["models"]["two-tower learned"]
    assert row["users"] == 80 and row["ndcg@10"]["mean"] == pytest.approx(both.mean())
    assert row["ndcg@10"]["se"] == pytest.approx(both.std(ddof=1) / np.sqrt(80))
    assert row["paired"]["popularity"]["recall@20"]["mean"] == pytest.approx((50 * 0.02 + 30 * 0.04) / 80)
    assert "per_user" not in pooled["runs"][0]


def test_attach_history_strictly_before_matches_pandas():
    ev = events()
    rows = ev.sample(40, random_state=0)[["user_id", "item_id", "event_timestamp"]]
    got = attach_history(rows, ev, strictly_before=True, limit=4)
    for r in got.itertuples():
        earlier = ev[(ev.user_id == r.user_id) & (ev.event_timestamp < r.event_timestamp)]
        want = earlier.sort_values(["event_timestamp", "item_id"], ascending=False).item_id.tolist()[:4]
        assert r.recent_items == want
    assert got.item_id.tolist() == rows.item_id.tolist()  # row order kept


def planted(n_users=300, n_items=60, n_groups=3, per_user=15, seed=0):
    """Users like the items of one hidden group; a feature column says which group (noisily)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_groups, n_users)
    item_group = np.arange(n_items) % n_groups
    rows = []
    for u in range(n_users):
        mine = np.flatnonzero(item_group == group[u])
        items = rng.choice(mine, per_user, replace=True)
        rows.append(pd.DataFrame({"user_id": u + 1, "item_id": items + 1,
                                  "taste": np.float64(group[u]) + rng.normal(0, 0.1, per_user),
                                  "recent_items": [list(rng.choice(mine, 3) + 1)] * per_user}))
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "kind": [f"k{g}" for g in item_group]})
    return pd.concat(rows, ignore_index=True), items, group, item_group


def test_two_tower_learns_planted_groups_and_round_trips(tmp_path):
    train, items, group, item_group = planted()
    cfg = TwoTowerConfig(query_columns=("taste",), item_columns=("kind",), user_ids=False, epochs=15, seed=0,
                         history="recent_items")
    model = TwoTower(cfg).fit(train, items)
    queries = pd.DataFrame({"user_id": [10_001, 10_002, 10_003], "taste": [0.0, 1.0, 2.0],
                            "recent_items": [[], [], []]})
    top = np.argsort(-model.score(queries), axis=1)[:, :10]
    for g in range(3):  # an unseen user with taste g gets group g's items
        assert (item_group[top[g]] == g).mean() >= 0.9
    art = model.save(tmp_path)
    again = TwoTower.load(tmp_path, art.version)
    np.testing.assert_allclose(again.score(queries), model.score(queries), atol=1e-5)
    np.testing.assert_allclose(again.item_vectors(), model.item_vectors(), atol=1e-6)
    # an item the model never saw is encoded from its columns: it lands with its kind's items
    new = again.item_vectors(pd.DataFrame({"item_id": [999], "kind": ["k1"]}))
    nearest = np.argsort(-(again.item_vectors() @ new[0]))[:10]
    assert (item_group[nearest] == 1).mean() >= 0.8
    with pytest.raises(SchemaError, match="not in the model's catalogue"):
        model.item_positions([12345])
    with pytest.raises(SchemaError, match="non-numeric"):
        model.query_vectors(queries.assign(taste=["a", "b", "c"]).astype({"taste": object}))


@pytest.mark.parametrize("weight", ["session_weight", "category_weight"])
def test_session_steering_moves_the_query_and_both_paths_agree(weight, tmp_path):
    """session_weight pulls the query towards the mean candidate vector of the newest ``recent`` items,
    category_weight adds the cosine between an item's categories (its 0/1 columns) and theirs; the one-request
    dict path equals the frame path with it on, the score is the search vectors' dot product, and a saved
    version scores the same."""
    from dataclasses import replace

    train, items, group, item_group = planted()
    items = items.assign(**{f"g{g}": (item_group == g).astype(np.int64) for g in range(3)},
                         noise=np.linspace(0, 1, len(items)))  # not 0/1: not a category
    model = TwoTower(TwoTowerConfig(query_columns=("taste",), item_columns=("kind", "g0", "g1", "g2", "noise"),
                                    user_ids=False, epochs=10, seed=0, history="recent_items", recent=3)
                     ).fit(train, items)
    cats = model.item_cats_.numpy()  # kind one-hot (k0, k1, k2), then g0, g1, g2; noise is no category
    assert cats.shape == (len(items), 6)
    np.testing.assert_array_equal(cats[:, 2], item_group == 2)
    np.testing.assert_array_equal(cats[:, 5], item_group == 2)
    g2 = [int(i) + 1 for i in np.flatnonzero(item_group == 2)[:3]]
    queries = pd.DataFrame({"user_id": [10_001], "taste": [0.0], "recent_items": [g2 + [1, 4, 7]]})
    share = []
    for w in (0.0, 5.0):
        model.config = replace(model.config, **{weight: w})
        frame = model.search_query_vectors(queries)[0]
        row = model.search_query_vector(queries.iloc[0].to_dict())
        np.testing.assert_allclose(row, frame, atol=1e-5)
        assert len(frame) == 64 + (6 if weight == "category_weight" and w else 0)
        scores = model.search_item_vectors(model.item_vectors(), model.item_ids_) @ frame
        np.testing.assert_allclose(scores / model.config.temperature, model.score(queries)[0], rtol=1e-4, atol=1e-4)
        top = np.argsort(-scores)[:10]
        share.append((item_group[top] == 2).mean())  # a taste-0 user who just took three group-2 items
    assert share[1] >= share[0] + 0.5, share
    again = TwoTower.load(tmp_path, model.save(tmp_path).version)
    np.testing.assert_allclose(again.score(queries), model.score(queries), atol=1e-4)


def test_popularity_term_adds_the_log_training_share(tmp_path):
    """popularity_weight adds weight x log(add-one smoothed training share) of each item to its score (counted
    independently here); both serving paths agree, an item the model never saw counts as never consumed, a
    large weight ranks by popularity, and a saved version keeps the counts."""
    from dataclasses import replace

    train, items, _, _ = planted()
    model = TwoTower(TwoTowerConfig(query_columns=("taste",), item_columns=("kind",), user_ids=False, epochs=5,
                                    seed=0, history="recent_items")).fit(train, items)
    counts = train.item_id.value_counts().reindex(items.item_id, fill_value=0).to_numpy(float)
    logs = np.log((counts + 1) / (counts.sum() + len(counts) + 1))
    want = logs - logs.mean()  # centred: a constant per request, the same ranking
    np.testing.assert_allclose(model.log_popularity()[1:], want, rtol=1e-5, atol=1e-6)
    queries = pd.DataFrame({"user_id": [10_001], "taste": [1.0], "recent_items": [[2, 5]]})
    base = model.score(queries)[0]
    model.config = replace(model.config, popularity_weight=0.05)
    frame = model.search_query_vectors(queries)[0]
    np.testing.assert_allclose(model.search_query_vector(queries.iloc[0].to_dict()), frame, atol=1e-5)
    np.testing.assert_allclose(model.score(queries)[0] - base, 0.05 * want / model.config.temperature, atol=1e-3)
    unknown = model.search_item_vectors(model.item_vectors(items.head(1).assign(item_id=999)), [999])[0, -1]
    assert unknown * frame[-1] == pytest.approx(0.05 * (np.log(1 / (counts.sum() + len(counts) + 1)) - logs.mean()),
                                                rel=1e-5)
    model.config = replace(model.config, popularity_weight=100.0)
    top = np.argsort(-model.score(queries)[0])[:5]
    assert set(counts[top]) <= set(np.sort(counts)[-5:])
    again = TwoTower.load(tmp_path, model.save(tmp_path).version)
    np.testing.assert_allclose(again.score(queries), model.score(queries), rtol=1e-5)


def test_cold_popularity_weight_applies_to_users_without_a_row_only(tmp_path):
    """cold_popularity_weight replaces popularity_weight for users the model has no user-id row for, on both
    serving paths; known users keep theirs. choose_cold_popularity picks the weight of the best Recall@20 on
    new users (here: targets that are the most popular items, so the largest weight) and refuses known users."""
    from dataclasses import replace

    train, items, _, _ = planted()
    popular = np.arange(1, 11)  # ten items of every group, consumed six times as often as the rest
    train = pd.concat([train] + [train[train.item_id.isin(popular)]] * 5, ignore_index=True)
    model = TwoTower(TwoTowerConfig(query_columns=("taste",), item_columns=("kind",), user_ids=True, epochs=3,
                                    seed=0, history="recent_items")).fit(train, items)
    queries = pd.DataFrame({"user_id": [5, 10_001], "taste": [1.0, 1.0], "recent_items": [[2, 5], [2, 5]]})
    model.config = replace(model.config, popularity_weight=0.05)
    warm = model.score(queries)
    model.config = replace(model.config, cold_popularity_weight=0.3)
    both = model.score(queries)
    np.testing.assert_allclose(both[0], warm[0], atol=1e-5)  # a known user: unchanged
    want = (0.3 - 0.05) * model.log_popularity()[1:] / model.config.temperature
    np.testing.assert_allclose(both[1] - warm[1], want, atol=1e-3)
    frame = model.search_query_vectors(queries)
    for i in range(2):
        np.testing.assert_allclose(model.search_query_vector(queries.iloc[i].to_dict()), frame[i], atol=1e-5)
    # a batch of concurrent requests (the service's path): the same rows, a known and a new user together
    np.testing.assert_allclose(model.search_query_vectors_of(queries.to_dict(orient="records")), frame, atol=1e-5)
    again = TwoTower.load(tmp_path, model.save(tmp_path).version)
    np.testing.assert_allclose(again.score(queries), both, rtol=1e-5)
    # warm weight 0, cold weight on: the popularity block still exists for the cold user
    model.config = replace(model.config, popularity_weight=0.0)
    assert model.search_query_vectors(queries).shape[1] == 65

    new = np.arange(20_001, 20_031)
    ids = items.item_id.to_numpy()
    targets = histories(pd.DataFrame({"user_id": np.repeat(new, 10), "item_id": np.tile(popular, 30)}), new, ids)
    known = histories(pd.DataFrame({"user_id": new[:0], "item_id": []}), new, ids)
    vq = pd.DataFrame({"user_id": new, "taste": np.tile([0.0, 1.0, 2.0], 10),
                       "recent_items": [[] for _ in new]})
    grid = model.choose_cold_popularity((vq, targets, known))
    recalls = [grid[w] for w in sorted(grid)]
    assert recalls == sorted(recalls) and recalls[-1] > recalls[0] + 0.3, grid  # more popularity, more of them
    assert model.config.cold_popularity_weight == max(grid)
    with pytest.raises(AutofeatError, match="trained on"):
        model.choose_cold_popularity((vq.assign(user_id=np.arange(1, 31)), targets, known))


@pytest.mark.parametrize("rank", [128, 12])
def test_item_item_term_adds_the_ease_score_of_the_history(rank, tmp_path):
    """item_item_weight adds weight / temperature x the EASE score of the request's history (EASE fitted here
    on its own, independently): exactly where the covered items are fewer than the rank, approximately at a
    lower rank; every serving path agrees, items outside the covered ones score 0 on it, a saved version keeps
    the factors, and choose_item_item picks from its grids. Only the newest ``item_item_recent`` (10) history
    items are summed."""
    from dataclasses import replace

    from feast_autofeat.models.ease import EASE

    train, items, _, _ = planted()
    model = TwoTower(TwoTowerConfig(query_columns=("taste",), item_columns=("kind",), user_ids=False, epochs=3,
                                    seed=0, history="recent_items", item_item_rank=rank,
                                    item_item_max_items=50)).fit(train, items)
    ids = items.item_id.to_numpy()
    users = np.unique(train.user_id)
    h = histories(train, users, ids)
    counts = h.item_counts()
    covered = np.sort(np.argsort(-counts, kind="stable")[:50])
    sub = histories(train[train.item_id.isin(ids[covered])], users, ids[covered])
    b = EASE(30.0).fit(sub).B_
    long = [int(i) for i in ids[covered[10:22]]]  # 12 items, newest first: the term reads the first 10
    queries = pd.DataFrame({"user_id": [10_001, 10_002, 10_003], "taste": [0.0, 2.0, 1.0],
                            "recent_items": [[int(ids[covered[0]]), int(ids[covered[3]])], [int(ids[covered[7]])],
                                             long]})
    base = model.score(queries)
    model.fit_item_item(h, 30.0)
    assert model.config.item_item_l2 == 30.0
    model.config = replace(model.config, item_item_weight=0.2)
    want = np.zeros_like(base)
    want[0, covered] = b[[0, 3]].sum(0)
    want[1, covered] = b[7]
    want[2, covered] = b[10:20].sum(0)
    got = (model.score(queries) - base) * model.config.temperature / 0.2
    if rank >= 50:
        np.testing.assert_allclose(got, want, atol=1e-4)
    else:  # rank 12 of a 50 x 50 B: most of it
        assert np.linalg.norm(got - want) < 0.5 * np.linalg.norm(want)
        assert np.corrcoef(got[0, covered], want[0, covered])[0, 1] > 0.8
    outside = np.setdiff1d(np.arange(len(ids)), covered)
    np.testing.assert_allclose(got[:, outside], 0.0, atol=1e-6)
    frame = model.search_query_vectors(queries)
    assert frame.shape[1] == 64 + min(rank, 50)
    np.testing.assert_allclose(model.search_query_vectors_of(queries.to_dict(orient="records")), frame, atol=1e-5)
    again = TwoTower.load(tmp_path, model.save(tmp_path).version)
    np.testing.assert_allclose(again.score(queries), model.score(queries), rtol=1e-5, atol=1e-5)
    # served as evaluated: the split index (covered items exact over every dimension, the rest without the
    # block) returns the model's own top 20
    assert model.item_item_dims() == min(rank, 50)
    catalogue = model.item_ids_
    index = build_index(catalogue, model.search_item_vectors(model.item_vectors(), catalogue), "exact",
                        tail=model.item_item_dims())
    assert len(index.side) == 50 and len(index) == len(catalogue) > 50
    top = catalogue[np.argsort(-model.score(queries), axis=1, kind="stable")[:, :20]]
    np.testing.assert_array_equal(index.search(frame, 20)[0], top)
    model.config = replace(model.config, item_item_weight=0.0)  # off: no dimensions
    assert model.item_item_dims() == 0
    assert model.search_query_vectors(queries).shape[1] == 64

    last = train.groupby("user_id").tail(2)
    before = train.drop(last.index)
    targets, known = histories(last, users, ids), histories(before, users, ids)
    vq = pd.DataFrame({"user_id": users, "taste": before.groupby("user_id").taste.first().to_numpy(),
                       "recent_items": before.groupby("user_id").item_id.agg(list).to_numpy()})
    grids = model.choose_item_item(h, (vq, targets, known), l2_grid=(10.0, 100.0), grid=(0.0, 1.0, 4.0))
    assert set(grids["l2"]) == {10.0, 100.0} and model.config.item_item_l2 in grids["l2"]
    assert model.config.item_item_weight in grids["weight"]
    assert max(grids["weight"].values()) == grids["weight"][model.config.item_item_weight]


def test_cold_item_item_weight_applies_to_users_without_a_row_only(tmp_path):
    """cold_item_item_weight replaces item_item_weight for users the model has no user-id row for, on every
    serving path; known users keep theirs; with the warm weight at 0 the block stays for new users only.
    choose_cold_item_item picks the grid's best NDCG@100 on new users and refuses known users."""
    from dataclasses import replace

    train, items, _, _ = planted()
    model = TwoTower(TwoTowerConfig(query_columns=("taste",), item_columns=("kind",), epochs=3, seed=0,
                                    history="recent_items")).fit(train, items)
    ids = items.item_id.to_numpy()
    users = np.unique(train.user_id)
    model.fit_item_item(histories(train, users, ids), 30.0)
    recent = [int(i) for i in ids[:4]]
    queries = pd.DataFrame({"user_id": [int(users[0]), 10_001], "taste": [1.0, 1.0], "recent_items": [recent] * 2})
    model.config = replace(model.config, item_item_weight=0.0)
    base = model.score(queries)
    model.config = replace(model.config, item_item_weight=0.2)
    warm = model.score(queries) - base
    assert np.abs(warm).max() > 1e-3
    np.testing.assert_allclose(warm[1], warm[0], atol=1e-5)  # one history, one weight
    model.config = replace(model.config, cold_item_item_weight=0.6)
    both = model.score(queries) - base
    np.testing.assert_allclose(both[0], warm[0], atol=1e-5)  # a known user: unchanged
    np.testing.assert_allclose(both[1], 3 * warm[1], atol=1e-4)  # a new user: 0.6 / 0.2 of it
    frame = model.search_query_vectors(queries)
    np.testing.assert_allclose(model.search_query_vectors_of(queries.to_dict(orient="records")), frame, atol=1e-5)
    again = TwoTower.load(tmp_path, model.save(tmp_path).version)
    np.testing.assert_allclose(again.score(queries) - base, both, rtol=1e-4, atol=1e-5)
    model.config = replace(model.config, item_item_weight=0.0)  # warm off, cold on: the block for new users
    assert model.item_item_dims() > 0
    np.testing.assert_allclose(model.score(queries)[0], base[0], atol=1e-5)

    new = np.arange(20_001, 20_031)
    last = train.groupby("user_id").tail(3)
    firsts = train.drop(last.index)
    pick = users[:30]
    targets = histories(last[last.user_id.isin(pick)].assign(user_id=lambda f: f.user_id.map(dict(zip(pick, new)))),
                        new, ids)
    known = histories(firsts[firsts.user_id.isin(pick)].assign(
        user_id=lambda f: f.user_id.map(dict(zip(pick, new)))), new, ids)
    vq = pd.DataFrame({"user_id": new, "taste": 1.0,
                       "recent_items": [firsts[firsts.user_id == u].item_id.tolist()[::-1] for u in pick]})
    grid = model.choose_cold_item_item((vq, targets, known), grid=(0.0, 1.0, 8.0))
    assert len(grid) == 3 and model.config.cold_item_item_weight == max(grid, key=lambda w: (grid[w], -w))
    with pytest.raises(AutofeatError, match="trained on"):
        model.choose_cold_item_item((vq.assign(user_id=pick), targets, known))


def test_two_tower_ids_only_and_validation_early_stopping():
    train, items, _, _ = planted(seed=1)
    cut = per_user_cut(train.assign(event_timestamp=pd.Timestamp("2024-01-01", tz="UTC")
                                    + pd.to_timedelta(np.arange(len(train)), unit="s")))
    users = np.unique(cut.future.user_id)
    valid = (pd.DataFrame({"user_id": users}), histories(cut.future, users, items.item_id.to_numpy()),
             histories(cut.history, users, items.item_id.to_numpy()))
    model = TwoTower(user_ids=True, epochs=40, patience=3, seed=0).fit(cut.history, items, valid=valid)
    m = model.metrics_
    assert m["epochs"] < 40 and 1 <= m["best_epoch"] <= m["epochs"] - 2
    assert m["valid_recall@20"] > 0.5  # 20 of 60 items, all in the user's group of 20: far above chance (1/3)
    with pytest.raises(SchemaError, match="at least one input"):
        TwoTower(user_ids=False, item_ids=False).fit(cut.history, items)


def test_exact_index_equals_brute_force_and_excludes():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(500, 16)).astype(np.float32)
    ids = np.arange(500) * 3 + 7
    q = rng.normal(size=(4, 16)).astype(np.float32)
    exclude = [set(), {int(ids[np.argmax(vecs @ q[1])])}, set(ids[:250].tolist()), set()]
    got_ids, got_scores = ExactIndex(ids, vecs).search(q, 10, exclude)
    for row in range(4):
        s = vecs @ q[row]
        s[np.isin(ids, list(exclude[row]))] = -np.inf
        order = np.argsort(-s, kind="stable")[:10]
        assert got_ids[row].tolist() == ids[order].tolist()
        np.testing.assert_allclose(got_scores[row], s[order], rtol=1e-5)


def test_hnsw_recall_against_brute_force():
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(20_000, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(len(vecs)) + 1
    q = vecs[rng.choice(len(vecs), 50)] + rng.normal(0, 0.3, (50, 32)).astype(np.float32)
    exact, _ = ExactIndex(ids, vecs).search(q, 100)
    approx, scores = HnswIndex(ids, vecs).search(q, 100, exclude=[{int(exact[0, 0])}] + [set()] * 49)
    assert exact[0, 0] not in approx[0]
    recall = np.mean([len(set(a) & set(e)) / 100 for a, e in zip(approx[1:], exact[1:])])
    assert recall >= 0.95
    np.testing.assert_allclose(scores[1], vecs[approx[1] - 1] @ q[1], atol=1e-4)
    assert build_index(ids[:10], vecs[:10]).kind == "exact"
    with pytest.raises(Exception, match="materialize"):
        build_index(np.zeros(0, np.int64), np.zeros((0, 4), np.float32))


def test_new_items_cut_targets_only_items_first_seen_after_it():
    t = pd.Timestamp("2024-01-01", tz="UTC")
    ev = pd.DataFrame({"user_id": [1, 1, 2, 2, 1, 3, 2, 1, 3], "item_id": [10, 11, 10, 12, 20, 20, 11, 21, 10],
                       "event_timestamp": [t + pd.Timedelta(days=d) for d in (0, 1, 2, 3, 4, 5, 6, 7, 8)]})
    new = protocol_n(ev, train_share=0.5)  # the cut at the 5th positive's time (day 4)
    assert new.cut.future.event_timestamp.min() == t + pd.Timedelta(days=4)
    assert new.candidates.tolist() == [20, 21]  # 10, 11, 12 were seen before the cut
    assert new.train_events.item_id.tolist() == [10, 11, 10, 12]
    # user 3 has nothing before the cut, user 2 no new item after it: only user 1 is tested, on 20 and 21
    assert new.cut.future[["user_id", "item_id"]].values.tolist() == [[1, 20], [1, 21]]
    assert new.cut.history.item_id.tolist() == [10, 11]
    scores = new_items_scores(np.arange(10, dtype=np.float64)[None, :].repeat(2, 0), np.arange(10, 20),
                              np.array([12, 15]))
    assert np.isfinite(scores).sum() == 4 and scores[0, 2] == 2 and scores[1, 5] == 5


def test_category_popularity_by_hand():
    from feast_autofeat.models.ease import CategoryPopularity
    from feast_autofeat.models.interactions import Histories

    cats = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])  # items 0..3; item 3 has no category
    train = Histories.from_pairs(np.array([0, 0, 1]), np.array([0, 1, 0]), 2, 4)  # item 0 twice, item 1 once
    model = CategoryPopularity(cats, alpha=3.0).fit(train)
    np.testing.assert_allclose(model.share_, [2 / 3, 1 / 3])
    known = Histories.from_pairs(np.array([0, 0, 1]), np.array([1, 2, 0]), 3, 4)  # user 2 knows nothing
    s = model.score(known)
    # user 0: n_u = 2, in category 0: 1 (item 2), in 1: 2 -> (1 + 2) / 5, (2 + 1) / 5
    u0 = np.array([3 / 5, 3 / 5])
    u2 = np.array([2 / 3, 1 / 3])  # nothing known: everyone's shares
    np.testing.assert_allclose(s[0], [u0[0], u0[1], u0.mean(), 0.0], rtol=1e-6)
    np.testing.assert_allclose(s[2], [u2[0], u2[1], 0.5, 0.0], rtol=1e-6)
    assert s[1, 0] > s[1, 1]  # user 1 knows item 0 (category 0)


def test_an_item_without_positives_is_placed_by_its_content(tmp_path):
    """DropoutNet-style item-id dropout: a catalogue item nobody interacted with gets the trained unknown-item
    row and lands with the items its content vector (say, a text embedding) resembles."""
    train, items, group, item_group = planted()
    rng = np.random.default_rng(1)
    items = items.assign(text=list(np.eye(3)[item_group] + rng.normal(0, 0.3, (len(items), 3))))
    cold = np.arange(54, 60) + 1  # six items (two per group) never in the training rows
    train = train[~train.item_id.isin(cold)]
    cfg = TwoTowerConfig(query_columns=("taste",), item_vectors=("text",), user_ids=False, epochs=15, seed=0,
                         history="recent_items", item_id_dropout=0.3)
    model = TwoTower(cfg).fit(train, items)
    rows = model.item_rows(np.arange(1, 61))
    assert (model.id_rows(rows)[cold - 1] == 0).all() and (model.id_rows(rows)[:54] == rows[:54]).all()
    assert model.cold_items().tolist() == (cold - 1).tolist()
    vectors = model.item_vectors()
    warm = np.arange(54)
    for c in cold - 1:
        nearest = warm[np.argsort(-(vectors[warm] @ vectors[c]))[:10]]
        assert (item_group[nearest] == item_group[c]).mean() >= 0.8, (c, item_group[nearest])
    again = TwoTower.load(tmp_path, model.save(tmp_path).version)
    np.testing.assert_allclose(again.item_vectors(), vectors, atol=1e-6)
    # without the option (versions saved before it) every item keeps its own row
    again.config = dataclasses.replace(again.config, item_id_dropout=0.0)
    assert (again.id_rows(rows) == rows).all()
