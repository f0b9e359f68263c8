"""`store.get_historical_features` on ML-100K against an independent DuckDB ASOF JOIN, value by value.

The entity rows are all 100,000 interactions plus hand-made edge cases: unknown user and item, a user
asked about before they existed, TTL expiry after a user goes quiet (including the exact boundary).
"""

import duckdb
import numpy as np
import pandas as pd
import pytest

from feast_autofeat.datasets.base import table_path

DAY = pd.Timedelta(days=1)


def _edge_rows(data) -> pd.DataFrame:
    ev, ub = data["interactions"], data["user_behaviour"]
    last_snap = ub.groupby("user_id")["event_timestamp"].max()
    user = int(last_snap.index[0])
    first = ev.loc[ev.user_id == user, "event_timestamp"].min()
    rows = [
        (99_999, 99_999, ev.event_timestamp.median()),  # unknown user and item: no history at all
        (user, 50, first - pd.Timedelta(hours=1)),  # before the user existed: everything missing
        (user, 50, last_snap[user] + pd.Timedelta(hours=23)),  # last snapshot still valid
        (user, 50, last_snap[user] + DAY),  # exactly one day later: expired (TTL)
        (user, 50, last_snap[user] + 40 * DAY),  # long gone quiet: behaviour expired, profile kept
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_timestamp"])


def _expected(entity: pd.DataFrame, data: dict) -> pd.DataFrame:
    """Point-in-time join written independently of Feast: DuckDB ASOF JOINs, then the 1-day snapshot TTL."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    for name, df in data.items():
        con.register(name, df)
    con.register("entity", entity)
    cols = {name: [c for c in df.columns if c not in ("user_id", "item_id", "event_timestamp",
                                                      "created_timestamp")]
            for name, df in data.items()}
    select = ["e.user_id", "e.item_id", "e.event_timestamp"]
    select += [f"up.{c}" for c in cols["users"]] + [f"ip.{c}" for c in cols["items"]]
    select += [f"CASE WHEN e.event_timestamp < ub.event_timestamp + INTERVAL 1 DAY THEN ub.{c} END AS {c}"
               for c in cols["user_behaviour"]]
    select += [f"CASE WHEN e.event_timestamp < pp.event_timestamp + INTERVAL 1 DAY THEN pp.{c} END AS {c}"
               for c in cols["item_popularity"]]
    sql = f"""
    SELECT {", ".join(select)} FROM entity e
    ASOF LEFT JOIN users up ON e.user_id = up.user_id AND e.event_timestamp >= up.created_timestamp
    ASOF LEFT JOIN items ip ON e.item_id = ip.item_id AND e.event_timestamp >= ip.created_timestamp
    ASOF LEFT JOIN user_behaviour ub ON e.user_id = ub.user_id AND e.event_timestamp >= ub.event_timestamp
    ASOF LEFT JOIN item_popularity pp ON e.item_id = pp.item_id AND e.event_timestamp >= pp.event_timestamp
    """
    return con.sql(sql).df()


def _key(df):
    return df.sort_values(["user_id", "item_id", "event_timestamp"], ignore_index=True)


@pytest.fixture(scope="module")
def data(ml_repo):
    return {n: pd.read_parquet(table_path(ml_repo / "data", n))
            for n in ("interactions", "users", "items", "user_behaviour", "item_popularity")}


@pytest.fixture(scope="module")
def joined(ml_store, data):
    entity = pd.concat([data["interactions"][["user_id", "item_id", "event_timestamp"]], _edge_rows(data)],
                       ignore_index=True)
    got = ml_store.get_historical_features(
        entity_df=entity, features=ml_store.get_feature_service("recommender_features")).to_df()
    return entity, _key(got), _key(_expected(entity, data))


def test_every_value_matches_the_independent_join(joined):
    entity, got, exp = joined
    assert len(got) == len(entity) == len(exp)
    assert (got[["user_id", "item_id"]].to_numpy() == exp[["user_id", "item_id"]].to_numpy()).all()
    assert (got.event_timestamp.to_numpy() == exp.event_timestamp.to_numpy()).all()
    feature_cols = [c for c in exp.columns if c not in ("user_id", "item_id", "event_timestamp")]
    assert set(feature_cols) <= set(got.columns)
    for c in feature_cols:
        g, e = got[c], exp[c]
        assert (g.isna() == e.isna()).all(), f"{c}: missing values differ"
        if pd.api.types.is_numeric_dtype(e) or pd.api.types.is_numeric_dtype(g):
            np.testing.assert_allclose(g[e.notna()].astype(float), e[e.notna()].astype(float), err_msg=c)
        else:
            assert (g[e.notna()].astype(str) == e[e.notna()].astype(str)).all(), c


def test_edge_cases_behave_as_documented(joined, data):
    _, got, _ = joined
    edge = _edge_rows(data)
    unknown = got[got.user_id == 99_999].iloc[0]
    assert pd.isna(unknown["age"]) and pd.isna(unknown["events_30d"]) and pd.isna(unknown["title"])
    user = int(edge.user_id[1])
    rows = got[(got.user_id == user) & (got.item_id == 50)].set_index("event_timestamp")
    before, valid, boundary, quiet = (rows.loc[t] for t in edge.event_timestamp[1:5])
    assert pd.isna(before["age"]) and pd.isna(before["events_30d"])
    assert valid["events_30d"] > 0 and not pd.isna(valid["age"])
    assert pd.isna(boundary["events_30d"]) and not pd.isna(boundary["age"])  # TTL expired at exactly 1 day
    assert pd.isna(quiet["events_30d"]) and quiet["age"] == data["users"].set_index("user_id").age[user]


def test_no_value_comes_from_the_future(joined, data):
    """Every behaviour value equals the snapshot stamped at or before the row, never a later one."""
    _, got, _ = joined
    ub = data["user_behaviour"][["user_id", "event_timestamp", "events_30d"]].rename(
        columns={"event_timestamp": "snap_ts"})
    m = got[got.events_30d.notna()][["user_id", "event_timestamp", "events_30d"]].merge(
        ub, on=["user_id", "events_30d"])
    # for each row, some snapshot with the same value lies in (ts - 1 day, ts]
    ok = (m.snap_ts <= m.event_timestamp) & (m.snap_ts > m.event_timestamp - DAY)
    hits = ok.groupby([m.user_id, m.event_timestamp]).any()
    assert hits.all() and len(hits) == got[got.events_30d.notna()][["user_id", "event_timestamp"]] \
        .drop_duplicates().shape[0]
