"""Behaviour snapshots on hand-built events, values computed by hand."""

from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pytest

from feast_autofeat.datasets.synthetic import SPEC
from feast_autofeat.errors import DataError
from feast_autofeat.features.snapshots import (
    build_snapshots,
    item_popularity_fields,
    recent_items_table,
    user_behaviour_fields,
)

T0 = pd.Timestamp("2025-01-01", tz="UTC")


def _events():
    rows = [  # user, item, type, day, hour
        (1, 1, "browse", 0, 10), (1, 1, "click", 0, 11), (1, 2, "purchase", 5, 8), (1, 2, "browse", 20, 12),
        (2, 1, "browse", 3, 0),
    ]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "day", "hour"])
    ev["event_timestamp"] = T0 + pd.to_timedelta(ev["day"], unit="D") + pd.to_timedelta(ev["hour"], unit="h")
    items = pd.DataFrame({"item_id": [1, 2], "category": ["books", "toys"]})
    return (pa.Table.from_pandas(ev.drop(columns=["day", "hour"]), preserve_index=False),
            pa.Table.from_pandas(items, preserve_index=False))


def _at(table: pd.DataFrame, key: str, entity: int, day: int) -> pd.Series:
    rows = table[(table[key] == entity) & (table["event_timestamp"] == T0 + pd.Timedelta(days=day))]
    assert len(rows) == 1, f"expected one snapshot for {key}={entity} on day {day}, got {len(rows)}"
    return rows.iloc[0]


@pytest.fixture(scope="module")
def snaps():
    ev, items = _events()
    out = build_snapshots(ev, items, SPEC, until=datetime(2025, 3, 1, tzinfo=timezone.utc))
    return {k: v.to_pandas() for k, v in out.items()}


def test_columns_match_declared_fields(snaps):
    assert list(snaps["user_behaviour"].columns) == ["user_id", "event_timestamp"] + [
        n for n, _ in user_behaviour_fields(SPEC)]
    assert list(snaps["item_popularity"].columns) == ["item_id", "event_timestamp"] + [
        n for n, _ in item_popularity_fields(SPEC)]


def test_values_by_hand(snaps):
    ub = snaps["user_behaviour"]
    d1 = _at(ub, "user_id", 1, 1)
    assert (d1.events_7d, d1.browse_7d, d1.click_7d, d1.purchase_7d) == (2, 1, 1, 0)
    assert (d1.cat_books_7d, d1.cat_toys_7d, d1.distinct_items_7d, d1.events_30d) == (2, 0, 1, 2)
    assert d1.days_since_last_event == pytest.approx(13 / 24)
    d6 = _at(ub, "user_id", 1, 6)
    assert (d6.events_7d, d6.purchase_7d, d6.cat_toys_7d, d6.distinct_items_7d) == (3, 1, 1, 2)
    assert d6.days_since_last_event == pytest.approx(16 / 24)
    d8 = _at(ub, "user_id", 1, 8)  # day 0 has left the 7-day window, not the 30-day one
    assert (d8.events_7d, d8.events_30d, d8.distinct_items_7d, d8.distinct_items_30d) == (1, 3, 1, 2)
    d31 = _at(ub, "user_id", 1, 31)  # day 0 has left the 30-day window too
    assert (d31.events_7d, d31.events_30d, d31.browse_30d, d31.purchase_30d) == (0, 2, 1, 1)
    assert d31.days_since_last_event == pytest.approx(11 - 12 / 24)
    d50 = _at(ub, "user_id", 1, 50)
    assert (d50.events_30d, d50.distinct_items_30d) == (1, 1)


def test_a_snapshot_never_sees_its_own_day(snaps):
    ub = snaps["user_behaviour"]
    # nothing for user 2 on the day of its only event (day 3), first on day 4
    assert ub[(ub.user_id == 2) & (ub.event_timestamp <= T0 + pd.Timedelta(days=3))].empty
    assert _at(ub, "user_id", 2, 4).events_7d == 1


def test_rows_exist_exactly_while_the_30_day_window_has_activity(snaps):
    ub = snaps["user_behaviour"]
    days = ((ub.event_timestamp - T0).dt.days).groupby(ub.user_id).agg(list)
    assert days[1] == list(range(1, 51))  # events on days 0..20 -> snapshots on days 1..50
    assert days[2] == list(range(4, 34))


def test_item_popularity(snaps):
    ip = snaps["item_popularity"]
    d4 = _at(ip, "item_id", 1, 4)
    assert (d4.item_events_7d, d4.item_browse_7d, d4.item_click_7d, d4.item_distinct_users_7d) == (3, 2, 1, 2)
    assert d4.item_days_since_last_event == pytest.approx(1.0)


def test_until_caps_snapshots_at_the_observed_period():
    ev, items = _events()
    ub = build_snapshots(ev, items, SPEC)["user_behaviour"].to_pandas()
    # default: the first midnight after the last event (day 20 12:00 -> day 21)
    assert ub.event_timestamp.max() == T0 + pd.Timedelta(days=21)


def test_missing_column_and_empty_log_are_refused():
    ev, items = _events()
    with pytest.raises(DataError, match="event_type"):
        build_snapshots(ev.drop_columns(["event_type"]), items, SPEC)
    with pytest.raises(DataError, match="empty"):
        build_snapshots(ev.slice(0, 0), items, SPEC)


def test_recent_items_are_positives_newest_first_and_seen_is_everything():
    ev, _ = _events()
    got = recent_items_table(ev, SPEC.positive).to_pandas()  # synthetic: anything deeper than a browse is positive
    assert got.user_id.tolist() == [1, 2]
    assert list(got.recent_items[0]) == [2, 1]  # purchase on day 5, click on day 0
    us = [int((T0 + pd.Timedelta(days=d, hours=h)).timestamp() * 1e6) for d, h in ((5, 8), (0, 11))]
    assert list(got.recent_times[0]) == us
    assert list(got.seen_items[0]) == [2, 1]  # item 2 browsed on day 20, item 1 last on day 0
    assert got.event_timestamp[0] == T0 + pd.Timedelta(days=20, hours=12)
    assert list(got.recent_items[1]) == [] and list(got.seen_items[1]) == [1]  # user 2 only browsed
    assert list(recent_items_table(ev, SPEC.positive, limit=1).to_pandas().recent_items[0]) == [2]
    assert list(recent_items_table(ev, SPEC.positive, seen_limit=1).to_pandas().seen_items[0]) == [2]
