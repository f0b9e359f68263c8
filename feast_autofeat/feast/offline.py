"""Reads through Feast's offline store that training, evaluation and serving share: a repo's interaction log, the
(key, time) rows of feature views' sources, and the latest rows of a view.

Interaction frames use fixed column names inside feast-autofeat (``user_id``, ``item_id``, ``event_timestamp``,
plus the log's event-type and rating columns under their own names), whatever the repo calls its join keys;
frames handed back to Feast (entity dataframes) use the repo's names again.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from feast_autofeat.errors import AutofeatError, DataError, RepoError
from feast_autofeat.tables import predicate_mask as positive_mask  # noqa: F401 - the name callers use

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FAR = datetime(2200, 1, 1, tzinfo=timezone.utc)  # "no end" (pandas timestamps end in 2262)
USER, ITEM, TS = "user_id", "item_id", "event_timestamp"


def utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def parse_time(value, what: str = "--as-of") -> datetime | None:
    """An ISO 8601 time (naive = UTC) or datetime as an aware UTC datetime; None stays None."""
    if value is None or isinstance(value, datetime):
        return utc(value) if value is not None else None
    try:
        return utc(pd.Timestamp(str(value)).to_pydatetime())
    except (ValueError, TypeError):
        raise AutofeatError(f"{what} {str(value)[:40]!r} is not a time: use ISO 8601, e.g. 2024-05-01T00:00:00."
                            ) from None


def registered_view(store, name: str, what: str = "feature view"):
    """The registered feature view ``name``, or a ``RepoError`` saying to run ``feast apply``."""
    try:
        return store.get_feature_view(name)
    except Exception:  # Feast's FeatureViewNotFoundException
        raise RepoError(f"{what} {name} is not registered in {store.repo_path}: run `feast apply` there first."
                        ) from None


def _offline(store):
    return store._get_provider().offline_store


def read_events(store, inter, as_of: datetime | None = None) -> pd.DataFrame:
    """Every event of the declared interaction log at or before ``as_of`` (default: all), as
    ``user_id, item_id, <event type / rating columns>, event_timestamp``, read through Feast's offline store."""
    source = inter.source
    try:
        job = _offline(store).pull_all_from_table_or_query(
            config=store.config, data_source=source, join_key_columns=[inter.user_key, inter.item_key],
            feature_name_columns=inter.value_columns, timestamp_field=inter.timestamp, start_date=EPOCH,
            end_date=utc(as_of) if as_of else FAR)
        df = job.to_df()
    except Exception as exc:
        raise DataError(f"reading the interaction log {inter.name} failed ({type(exc).__name__}: {exc}); check "
                        "its source path and that it holds the declared columns.") from exc
    df = df.rename(columns={inter.user_key: USER, inter.item_key: ITEM, inter.timestamp: TS})
    return df[[USER, ITEM, *inter.value_columns, TS]]


def positive_events(store, inter, as_of: datetime | None = None, events: pd.DataFrame | None = None
                    ) -> pd.DataFrame:
    """Positive interactions (the declaration's ``positive`` predicate), one row per (user, item) at its first
    positive time, ordered by user, time, item."""
    ev = read_events(store, inter, as_of) if events is None else events
    pos = ev[positive_mask(ev, inter.positive)]
    out = (pos.groupby([USER, ITEM], as_index=False, sort=False)[TS].min()
           .sort_values([USER, TS, ITEM], ignore_index=True))
    return out


def last_event(store, inter) -> datetime:
    """The time of the log's newest event."""
    ev = read_events(store, inter)
    if ev.empty:
        raise DataError(f"the interaction log {inter.name} is empty.")
    return utc(pd.Timestamp(ev[TS].max()).to_pydatetime())


def source_rows(store, views: list, key: str, as_of: datetime | None = None) -> pd.DataFrame:
    """The distinct (``key``, ``event_timestamp``) pairs of the feature views' own source rows at or before
    ``as_of``: the moments the store holds a feature row for an entity (default training rows)."""
    frames = []
    for view in views:
        src = view.batch_source
        job = _offline(store).pull_all_from_table_or_query(
            config=store.config, data_source=src, join_key_columns=[key], feature_name_columns=[],
            timestamp_field=src.timestamp_field, start_date=EPOCH,
            end_date=utc(as_of) if as_of else FAR)
        df = job.to_df()
        frames.append(df[[key, src.timestamp_field]].set_axis([key, TS], axis=1))
    if not frames:
        return pd.DataFrame({key: [], TS: pd.Series([], dtype="datetime64[us, UTC]")})
    rows = pd.concat(frames, ignore_index=True)
    rows[TS] = pd.to_datetime(rows[TS], utc=True)
    return rows.drop_duplicates(ignore_index=True)


def latest_rows(store, view, key: str, features: list[str], end: datetime | None = None) -> pd.DataFrame:
    """Each entity's latest source row of ``view`` at or before ``end`` (default: now): ``key`` plus
    ``features``, sorted by key."""
    src = view.batch_source
    df = _offline(store).pull_latest_from_table_or_query(
        config=store.config, data_source=src, join_key_columns=[key], feature_name_columns=features,
        timestamp_field=src.timestamp_field, created_timestamp_column=src.created_timestamp_column or None,
        start_date=EPOCH, end_date=utc(end) if end else datetime.now(timezone.utc)).to_df()
    return df[[key, *features]].sort_values(key, ignore_index=True)
