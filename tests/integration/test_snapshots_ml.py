"""ML-100K behaviour snapshots against a brute-force pandas computation from the raw events."""

import numpy as np
import pandas as pd
import pytest

from feast_autofeat.datasets.base import table_path
from feast_autofeat.datasets.movielens import GENRES

DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def tables(ml_repo):
    data = ml_repo / "data"
    return {n: pd.read_parquet(table_path(data, n))
            for n in ("interactions", "items", "user_behaviour", "item_popularity")}


def _window(ev, key, entity, at, days):
    sel = ev[(ev[key] == entity) & (ev.event_timestamp < at) & (ev.event_timestamp >= at - days * DAY)]
    return sel


def test_user_snapshots_match_brute_force(tables):
    ev = tables["interactions"].merge(tables["items"], on="item_id")
    ub = tables["user_behaviour"]
    sample = ub.sample(300, random_state=0)
    for row in sample.itertuples(index=False):
        at = row.event_timestamp
        w7, w30 = (_window(ev, "user_id", row.user_id, at, d) for d in (7, 30))
        assert row.events_7d == len(w7) and row.events_30d == len(w30)
        assert row.like_30d == (w30.rating >= 4).sum() and row.dislike_7d == (w7.rating <= 2).sum()
        assert row.neutral_30d == (w30.rating == 3).sum()
        for g in ("drama", "comedy", "sci_fi", GENRES[int(row.user_id) % len(GENRES)]):
            assert getattr(row, f"cat_{g}_7d") == w7[f"genre_{g}"].sum()
            assert getattr(row, f"cat_{g}_30d") == w30[f"genre_{g}"].sum()
        assert row.distinct_items_30d == w30.item_id.nunique()
        assert row.mean_rating_30d == pytest.approx(w30.rating.mean())
        assert row.days_since_last_event == pytest.approx((at - w30.event_timestamp.max()) / DAY)


def test_item_snapshots_match_brute_force(tables):
    ev, ip = tables["interactions"], tables["item_popularity"]
    for row in ip.sample(300, random_state=1).itertuples(index=False):
        w7, w30 = (_window(ev, "item_id", row.item_id, row.event_timestamp, d) for d in (7, 30))
        assert (row.item_events_7d, row.item_events_30d) == (len(w7), len(w30))
        assert row.item_like_7d == (w7.rating >= 4).sum()
        assert row.item_distinct_users_30d == w30.user_id.nunique()


def test_snapshot_rows_are_exactly_the_active_days(tables):
    """One row per (user, day) with activity in the trailing 30 days, up to the first midnight after the
    last event; computed here from the events' day numbers with numpy."""
    ev, ub = tables["interactions"], tables["user_behaviour"]
    epoch = pd.Timestamp(0, tz="UTC")
    day = (ev.event_timestamp - epoch) // DAY
    until = day.max() + 1
    expected = {(u, d + k) for u, d in set(zip(ev.user_id, day)) for k in range(1, 31) if d + k <= until}
    got = set(zip(ub.user_id, (ub.event_timestamp - epoch) // DAY))
    assert got == expected
    assert np.all(ub.events_30d > 0)
