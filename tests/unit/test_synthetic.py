"""The synthetic generator: deterministic, exact sizes, and the hidden structure it promises."""

import numpy as np
import pandas as pd
import pytest

from feast_autofeat.datasets.synthetic import (
    ADJECTIVES,
    CATEGORIES,
    EVENT_TYPES,
    NOUNS,
    SyntheticConfig,
    brand_names,
    generate,
    item_texts,
)
from feast_autofeat.errors import DataError

CFG = SyntheticConfig(users=800, items=300, days=40, events=60_000, seed=7)


@pytest.fixture(scope="module")
def data():
    return {k: v.to_pandas() for k, v in generate(CFG).items()}


def test_same_seed_same_data_other_seed_other_data():
    a, b = generate(CFG), generate(CFG)
    for name in a:
        assert a[name].equals(b[name]), name
    c = generate(SyntheticConfig(**{**CFG.params(), "seed": 8}))
    assert not a["interactions"].equals(c["interactions"])


def test_sizes_ids_and_period(data):
    ev = data["interactions"]
    assert len(ev) == CFG.events
    assert ev["user_id"].between(1, CFG.users).all() and ev["item_id"].between(1, CFG.items).all()
    assert set(ev["event_type"]) == set(EVENT_TYPES)
    start = pd.Timestamp(CFG.start, tz="UTC")
    assert ev["event_timestamp"].min() >= start
    assert ev["event_timestamp"].max() < start + pd.Timedelta(days=CFG.days)
    assert ev["event_timestamp"].is_monotonic_increasing
    assert len(data["users"]) == CFG.users and len(data["items"]) == CFG.items
    assert set(data["items"]["category"]) <= set(CATEGORIES)
    assert (data["items"]["price"] > 0).all()


def test_no_event_before_signup_or_launch(data):
    ev = data["interactions"]
    u = ev.merge(data["users"][["user_id", "created_timestamp"]], on="user_id")
    assert (u["event_timestamp"] >= u["created_timestamp"]).all()
    i = ev.merge(data["items"][["item_id", "created_timestamp"]], on="item_id")
    assert (i["event_timestamp"] >= i["created_timestamp"]).all()
    # some users and items really do appear during the period
    start = pd.Timestamp(CFG.start, tz="UTC")
    assert (data["users"]["created_timestamp"] > start).mean() > 0.2
    assert (data["items"]["created_timestamp"] > start).mean() > 0.1


def test_funnel_is_ordered(data):
    counts = data["interactions"]["event_type"].value_counts()
    assert counts["browse"] > counts["click"] > counts["cart"] > counts["purchase"] > 0


def test_popularity_and_activity_are_long_tailed(data):
    ev = data["interactions"]
    item_counts = np.sort(ev["item_id"].value_counts().to_numpy())[::-1]
    top10 = item_counts[: len(item_counts) // 10].sum() / item_counts.sum()
    assert top10 > 0.35, f"top 10% of items get {top10:.0%} of events"
    user_counts = ev["user_id"].value_counts().to_numpy()
    assert user_counts.max() > 8 * np.median(user_counts)


def _early_late_distance(cfg: SyntheticConfig) -> float:
    """Mean total-variation distance between users' category mix in the first and last third."""
    d = generate(cfg)
    ev = d["interactions"].to_pandas().merge(d["items"].to_pandas()[["item_id", "category"]], on="item_id")
    day = (ev["event_timestamp"] - pd.Timestamp(cfg.start, tz="UTC")).dt.days
    ev["part"] = np.where(day < cfg.days / 3, "early", np.where(day >= 2 * cfg.days / 3, "late", "mid"))
    ev = ev[ev["part"] != "mid"]
    mix = pd.crosstab([ev["user_id"], ev["part"]], ev["category"], normalize="index")
    n = ev.groupby(["user_id", "part"]).size().unstack()
    users = n.index[(n["early"] >= 40) & (n["late"] >= 40)]
    early = mix.xs("early", level="part").loc[users]
    late = mix.xs("late", level="part").loc[users]
    return float(0.5 * (early - late).abs().sum(axis=1).mean())


def test_preferences_drift_over_time():
    base = dict(users=300, items=300, days=60, events=120_000, seed=3)
    drifting = _early_late_distance(SyntheticConfig(**base, drift=0.8))
    stable = _early_late_distance(SyntheticConfig(**base, drift=0.0))
    assert drifting > stable + 0.1, (drifting, stable)


def test_bad_parameters_are_refused():
    with pytest.raises(DataError, match="--users"):
        SyntheticConfig(users=0)
    with pytest.raises(DataError, match="--events"):
        SyntheticConfig(events=-5)
    with pytest.raises(DataError, match="--popularity-skew"):
        SyntheticConfig(popularity_skew=-1.0)


def _top_share(cfg: SyntheticConfig) -> float:
    counts = np.sort(generate(cfg)["interactions"]["item_id"].to_pandas().value_counts().to_numpy())[::-1]
    return counts[: cfg.items // 20].sum() / counts.sum()


def test_popularity_skew_sets_the_head():
    """A larger --popularity-skew puts more of the events on the top 5% of items; the default is unchanged."""
    base = dict(users=500, items=1000, events=20_000, seed=1)
    flat, default, heavy = (_top_share(SyntheticConfig(**base, popularity_skew=s)) for s in (0.5, 1.5, 2.5))
    assert flat + 0.1 < default < heavy - 0.1, (flat, default, heavy)
    assert SyntheticConfig().popularity_skew == 1.5


def test_subsample_keeps_at_most_n_items_per_user_with_all_their_events():
    """prepare --max-per-user: counted independently with pandas: every user keeps min(N, their distinct items)
    items, every event of a kept (user, item) pair survives at its own time, nothing else does; the draw
    depends on the seed only."""
    from feast_autofeat.prepare import subsample

    log = generate(SyntheticConfig(users=200, items=300, events=20_000, seed=2))["interactions"]
    df = log.to_pandas()
    out = subsample(log, 5, seed=0).to_pandas()
    distinct = df.groupby("user_id").item_id.nunique()
    kept = out.groupby("user_id").item_id.nunique().reindex(distinct.index, fill_value=0)
    pd.testing.assert_series_equal(kept, np.minimum(distinct, 5), check_names=False)
    pairs = out[["user_id", "item_id"]].drop_duplicates()
    want = df.merge(pairs, on=["user_id", "item_id"])
    assert len(out) == len(want)  # every event of a kept pair, no other
    key = ["user_id", "item_id", "event_timestamp", "event_type"]
    pd.testing.assert_frame_equal(out.sort_values(key, ignore_index=True)[key],
                                  want.sort_values(key, ignore_index=True)[key])
    assert subsample(log, 5, seed=0).equals(subsample(log, 5, seed=0))
    assert not subsample(log, 5, seed=1).equals(subsample(log, 5, seed=0))
    assert subsample(log, 10_000).num_rows == log.num_rows
    one = subsample(log, 1).to_pandas()
    assert (one.groupby("user_id").item_id.nunique() == 1).all() and one.user_id.nunique() == df.user_id.nunique()


def test_item_texts_name_brand_category_and_strongest_factors():
    """Each title is "<brand> <adjective> <noun>": the brand's name, the adjective of the item's strongest factor
    by its sign, a noun of its category; the description adds the next two factors' adjectives and the category."""
    k, n = 16, 64
    cat = np.arange(n) % len(CATEGORIES)
    rank = np.arange(n) % 8
    strongest = np.arange(n) % k
    sign = np.where(np.arange(n) % 3 == 0, -1.0, 1.0)
    centroids = np.random.default_rng(0).normal(size=(len(CATEGORIES), k))
    offset = np.full((n, k), 0.01)
    offset[np.arange(n), strongest] = 3.0 * sign
    offset[np.arange(n), (strongest + 1) % k] = 2.0
    offset[np.arange(n), (strongest + 2) % k] = -1.0
    title, description = item_texts(cat, rank, centroids[cat] + offset, centroids, seed=0)
    names = brand_names(cat, rank)
    assert len(set(brand_names(np.repeat(np.arange(12), 8), np.tile(np.arange(8), 12)))) == 96
    for i in range(n):
        first = ADJECTIVES[strongest[i]][0 if sign[i] > 0 else 1]
        second, third = ADJECTIVES[(strongest[i] + 1) % k][0], ADJECTIVES[(strongest[i] + 2) % k][1]
        noun = next(w for w in NOUNS[CATEGORIES[cat[i]]] if title[i].endswith(w.title()))
        assert title[i] == f"{names[i]} {first.capitalize()} {noun.title()}", title[i]
        assert description[i] == (f"{first.capitalize()} and {second} {noun} by {names[i]}. A {third} pick in "
                                  f"{CATEGORIES[cat[i]]}."), description[i]
    again = item_texts(cat, rank, centroids[cat] + offset, centroids, seed=0)
    assert (again[0] == title).all() and (again[1] == description).all()


def test_item_texts_carry_taste_beyond_the_category(data):
    """Within a category, items whose descriptions share adjectives (the same strong hidden factors) are liked by
    the same users more often: the correlation, over same-category pairs, between shared adjectives and the
    cosine of the items' liker sets beats every one of 50 shuffles of the descriptions within categories."""
    items = data["items"].set_index("item_id")
    assert items.description.str.contains(" pick in ").all()
    vocabulary = sorted({a for pair in ADJECTIVES for a in pair})
    words = items.description.str.lower().str.replace(".", "", regex=False).str.split(" ").map(set)
    has = np.array([[a in w for a in vocabulary] for w in words], dtype=float)
    liked = data["interactions"].query("event_type != 'browse'")[["user_id", "item_id"]].drop_duplicates()
    m = pd.crosstab(liked.user_id, liked.item_id).reindex(columns=items.index, fill_value=0).to_numpy(float)
    co = m.T @ m / np.sqrt(np.outer(m.sum(0), m.sum(0)) + 1e-9)
    cat = items.category.to_numpy()
    pairs = (cat[:, None] == cat[None, :]) & ~np.eye(len(cat), dtype=bool)

    def correlation(h: np.ndarray) -> float:
        return float(np.corrcoef((h @ h.T)[pairs], co[pairs])[0, 1])

    rng = np.random.default_rng(0)
    shuffled = []
    for _ in range(50):
        order = np.arange(len(cat))
        for c in np.unique(cat):
            idx = np.flatnonzero(cat == c)
            order[idx] = rng.permutation(idx)
        shuffled.append(correlation(has[order]))
    assert correlation(has) > max(shuffled) > 0.0, (correlation(has), max(shuffled))
