"""Real `feast apply` / `feast materialize` / `feast materialize-incremental` into SQLite and a real
redis-server; `get_online_features` compared with the offline snapshots the values came from."""

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from feast_autofeat.datasets import load_manifest
from feast_autofeat.quickstart import run_feast

VIEWS = {"user_id": {"users": "user_profile", "user_behaviour": "user_behaviour"},
         "item_id": {"items": "item_profile", "item_popularity": "item_popularity"}}
TS = {"users": "created_timestamp", "items": "created_timestamp"}


def _latest(df: pd.DataFrame, key: str, ts_col: str, start, end) -> pd.DataFrame:
    """Each entity's newest row with start <= ts <= end: what a materialization over [start, end] writes."""
    sel = df[(df[ts_col] >= start) & (df[ts_col] <= end)]
    return sel.sort_values(ts_col).groupby(key).tail(1).set_index(key)


def _check_online(store: FeatureStore, repo, start, end):
    data = repo / "data"
    for key, views in VIEWS.items():
        ids = pd.read_parquet(data / f"{'users' if key == 'user_id' else 'items'}.parquet")[key].tolist()
        ids += [10**6]  # an entity that was never written
        refs, expected = [], []
        for table, view in views.items():
            df = pd.read_parquet(data / f"{table}.parquet")
            ts_col = TS.get(table, "event_timestamp")
            cols = [c for c in df.columns if c not in (key, ts_col)]
            refs += [f"{view}:{c}" for c in cols]
            expected.append(_latest(df, key, ts_col, start, end)[cols].reindex(ids))
        exp = pd.concat(expected, axis=1)
        got = store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_df()
        got = got.set_index(key).loc[ids]
        assert exp.notna().to_numpy().sum() > 0.3 * exp.size, "test data should populate most cells"
        assert got.iloc[-1].isna().all(), "an entity never written must read as missing"
        for c in exp.columns:
            g, e = got[c], exp[c]
            assert (g.isna().to_numpy() == e.isna().to_numpy()).all(), f"{c}: missing values differ"
            if pd.api.types.is_numeric_dtype(e):
                np.testing.assert_allclose(g[e.notna()].astype(float), e[e.notna()].astype(float), err_msg=c)
            else:
                assert (g[e.notna()].astype(str) == e[e.notna()].astype(str)).all(), c


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_materialize_then_incremental(backend, ml_repo_copy, request, monkeypatch):
    repo = ml_repo_copy
    yaml = None
    if backend == "redis":
        server = request.getfixturevalue("redis_db")
        monkeypatch.setenv("REDIS_CONNECTION_STRING", server.url)
        yaml = "feature_store.redis.yaml"
    start_s, end_s = load_manifest(repo / "data").materialize_window()
    start, end = (datetime.fromisoformat(s + "+00:00") for s in (start_s, end_s))
    mid = start + (end - start) / 2 + timedelta(hours=5, minutes=17)

    run_feast(repo, "apply", yaml=yaml, capture=True)
    run_feast(repo, "materialize", start_s, mid.strftime("%Y-%m-%dT%H:%M:%S"), yaml=yaml, capture=True)
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / (yaml or "feature_store.yaml"))
    if backend == "redis":
        import redis

        assert redis.Redis.from_url(f"redis://{server.url}").dbsize() > 900, "Redis holds the entity hashes"
    _check_online(store, repo, pd.Timestamp(start), pd.Timestamp(mid.replace(microsecond=0)))

    run_feast(repo, "materialize-incremental", end_s, yaml=yaml, capture=True)
    store.refresh_registry()
    _check_online(store, repo, pd.Timestamp(start), pd.Timestamp(end))
