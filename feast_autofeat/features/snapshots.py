"""Daily behaviour snapshots, computed in DuckDB SQL over the interaction log.

A snapshot stamped at midnight UTC of day ``d`` describes the trailing windows ``[d - 7 days, d)`` and
``[d - 30 days, d)``: it is computed only from events strictly before its own timestamp, so serving it at any
time ``t >= d`` never leaks the future. One row exists per entity and day on which the entity had at least one
event in the trailing 30 days; no row means "no activity in the last 30 days". The feature views give these
snapshots a TTL of just under one day, so an entity that went quiet reads as missing rather than as its
last (stale) snapshot.

Snapshots end at the first midnight after the last event (``until``): a later snapshot would claim to know
days that have not been observed yet.

How it is computed: events are reduced to (entity, counterpart, day) groups, each group is fanned out to
the 30 snapshot days it contributes to (``range(1, 31)``), and one GROUP BY per (entity, snapshot day)
computes every window count with ``FILTER`` clauses. Everything stays inside DuckDB.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from feast_autofeat.datasets.base import DatasetSpec, write_parquet_atomic
from feast_autofeat.errors import DataError

WINDOWS = (7, 30)
SNAPSHOT_EVERY = timedelta(days=1)
# Valid for the day it describes and not a microsecond longer (Feast's TTL bound is inclusive).
SNAPSHOT_TTL = SNAPSHOT_EVERY - timedelta(microseconds=1)
ITEM_PREFIX = "item_"


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise DataError(f"{name!r} is not a valid feature name (letters, digits and '_' only).")
    return name


# The two snapshot tables: entity key, the counterpart counted as "distinct", column prefix, per-category counts.
_TABLES = {
    "user_behaviour": ("user_id", "item_id", "", True),
    "item_popularity": ("item_id", "user_id", ITEM_PREFIX, False),
}
_HORIZON = max(WINDOWS)


def _columns(spec: DatasetSpec, table: str) -> list[tuple[str, str, str]]:
    """(column, Feast type, SQL aggregate over the fanned-out rows) of a snapshot table, in table order.

    The single source of both the SQL and the Feast schema, so the two cannot drift apart.
    """
    key, other, prefix, with_categories = _TABLES[table]
    signals = [_ident(s) for s, _ in spec.signals]
    cats = [_ident(c) for c, _ in spec.categories] if with_categories else []
    distinct = "items" if other == "item_id" else "users"
    cols: list[tuple[str, str, str]] = []
    for w in WINDOWS:
        flt = f" FILTER (WHERE k <= {w})" if w < _HORIZON else ""
        count = "CAST(coalesce(sum({col})" + flt + ", 0) AS BIGINT)"
        cols.append((f"{prefix}events_{w}d", "Int64", count.format(col="n")))
        cols += [(f"{prefix}{s}_{w}d", "Int64", count.format(col=f"s_{s}")) for s in signals]
        cols += [(f"{prefix}cat_{c}_{w}d", "Int64", count.format(col=f"c_{c}")) for c in cats]
        cols.append((f"{prefix}distinct_{distinct}_{w}d", "Int64", f"CAST(count(DISTINCT {other}){flt} AS BIGINT)"))
    if spec.rating_column:
        cols.append((f"{prefix}mean_rating_{_HORIZON}d", "Float64",
                     "CAST(sum(r_sum) / nullif(sum(r_n), 0) AS DOUBLE)"))
    cols.append((f"{prefix}days_since_last_event", "Float64", "(snap_day * 86400.0 - max(last_s)) / 86400.0"))
    return cols


def user_behaviour_fields(spec: DatasetSpec) -> list[tuple[str, str]]:
    """(column, Feast type) of the user behaviour snapshot, in table order."""
    return [(name, dtype) for name, dtype, _ in _columns(spec, "user_behaviour")]


def item_popularity_fields(spec: DatasetSpec) -> list[tuple[str, str]]:
    """(column, Feast type) of the item popularity snapshot; prefixed so names never collide with users'."""
    return [(name, dtype) for name, dtype, _ in _columns(spec, "item_popularity")]


def _snapshot_sql(spec: DatasetSpec, table: str, until_day: int) -> str:
    key, other, _, with_categories = _TABLES[table]
    # event predicates (signals, rating) see the event row alone, so an item column of the same name (an item's
    # own "rating") never makes them ambiguous; category predicates see the item row ``i``
    event_cols = [f"CAST(({pred}) AS BIGINT) AS s_{_ident(s)}" for s, pred in spec.signals]
    flag_cols = [f"sum(e.s_{_ident(s)}) AS s_{_ident(s)}" for s, _ in spec.signals]
    if with_categories:
        flag_cols += [f"sum(CAST(({pred}) AS BIGINT)) AS c_{_ident(c)}" for c, pred in spec.categories]
    if spec.rating_column:
        event_cols.append(f"e.{spec.rating_column} AS _rating")
        flag_cols += ["sum(e._rating) AS r_sum", "count(e._rating) AS r_n"]
    aggs = [f"{sql} AS {name}" for name, _, sql in _columns(spec, table)]
    return f"""
    WITH ev AS (
        SELECT e.user_id, e.item_id, e.event_timestamp{"".join(", " + c for c in event_cols)} FROM interactions e
    ), grouped AS (
        SELECT e.{key}, e.{other}, CAST(floor(epoch(e.event_timestamp) / 86400) AS BIGINT) AS day,
               count(*) AS n, max(epoch(e.event_timestamp)) AS last_s
               {"".join(", " + c for c in flag_cols)}
        FROM ev e JOIN items i ON e.item_id = i.item_id
        GROUP BY ALL
    ), fanned AS (
        SELECT g.*, k, day + k AS snap_day FROM grouped g, range(1, {_HORIZON + 1}) AS r(k)
        WHERE day + k <= {until_day}
    )
    SELECT {key}, to_timestamp(snap_day * 86400) AS event_timestamp,
           {", ".join(aggs)}
    FROM fanned
    GROUP BY {key}, snap_day
    ORDER BY event_timestamp, {key}
    """


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC, without DuckDB's own progress bar (we show ours)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    try:
        con.execute("SET enable_progress_bar = false")
    except duckdb.InvalidInputException:  # inside Jupyter without ipywidgets DuckDB refuses the setting (and
        pass  # shows no bar anyway)
    return con


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """A query's result as one Arrow table, across DuckDB 1.x (``arrow``) and 2.x (``to_arrow_table``)."""
    rel = con.sql(sql)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()


def build_snapshots(interactions: pa.Table, items: pa.Table, spec: DatasetSpec,
                    until: datetime | None = None) -> dict[str, pa.Table]:
    """Compute ``user_behaviour`` and ``item_popularity`` snapshot tables.

    ``until``: the last snapshot time (default: the first midnight after the last event).
    """
    for col in ("user_id", "item_id", "event_type", "event_timestamp"):
        if col not in interactions.column_names:
            raise DataError(f"interactions table lacks column {col!r}; re-run `feast-autofeat prepare`.")
    con = connect()
    try:
        con.register("interactions", interactions)
        con.register("items", items)
        last = con.sql("SELECT epoch(max(event_timestamp)) FROM interactions").fetchall()[0][0]
        if last is None:
            raise DataError("the interactions table is empty: nothing to build snapshots from.")
        until_day = int(last // 86400) + 1 if until is None else int(until.timestamp() // 86400)
        out = {}
        for name in _TABLES:
            out[name] = fetch_arrow(con, _snapshot_sql(spec, name, until_day))
        return out
    finally:
        con.close()


RECENT_ITEMS = 200  # positive items kept per user (newest first): serving's history, training's recent_items
SEEN_ITEMS = 1000  # items of any event kept per user (newest first): what serving never recommends again
RECENT_FIELDS = (("recent_items", "Int64"), ("recent_times", "Int64"), ("seen_items", "Int64"))  # Array(...)


def recent_items_table(interactions: pa.Table, positive: str, limit: int = RECENT_ITEMS,
                       seen_limit: int = SEEN_ITEMS) -> pa.Table:
    """``user_recent_items``, one row per user with any event:

    - ``recent_items``: their last ``limit`` distinct positive items, newest first (``[]`` if none): serving's
      history, the session embedding's input;
    - ``recent_times``: when each of those was last a positive, epoch microseconds (so feedback merges by time);
    - ``seen_items``: their last ``seen_limit`` distinct items of any event type: never recommended again;
    - ``event_timestamp``: the time of their newest event.

    ``positive``: the SQL predicate of a positive event (over the log's columns). Feedback
    (``recommend.feedback``) pushes the same row, merged with the new events."""
    con = connect()
    try:
        con.register("e", interactions)
        return fetch_arrow(con, f"""
            WITH p AS (SELECT user_id, item_id, max(event_timestamp) AS ts,
                              max(event_timestamp) FILTER (WHERE {positive}) AS pos_ts
                       FROM e GROUP BY user_id, item_id)
            SELECT user_id,
                   coalesce(list(item_id ORDER BY pos_ts DESC, item_id DESC) FILTER (WHERE pos_ts IS NOT NULL),
                            [])[1:{int(limit)}] AS recent_items,
                   coalesce(list(epoch_us(pos_ts) ORDER BY pos_ts DESC, item_id DESC)
                            FILTER (WHERE pos_ts IS NOT NULL), [])[1:{int(limit)}] AS recent_times,
                   list(item_id ORDER BY ts DESC, item_id DESC)[1:{int(seen_limit)}] AS seen_items,
                   max(ts) AS event_timestamp
            FROM p GROUP BY user_id ORDER BY user_id""")
    finally:
        con.close()


def derived_tables(interactions: pa.Table, items: pa.Table, spec: DatasetSpec) -> dict[str, pa.Table]:
    """Every table a prepared repo derives from its event log: ``user_behaviour`` and ``item_popularity``
    snapshots, and ``user_recent_items`` (the history view's lists)."""
    tables = build_snapshots(interactions, items, spec)
    tables["user_recent_items"] = recent_items_table(interactions, spec.positive)
    return tables


def snapshot_range(tables: dict[str, pa.Table]) -> tuple[str, str]:
    ts = tables["user_behaviour"]["event_timestamp"]
    if len(ts) == 0:
        return ("", "")
    return (pc.min(ts).as_py().isoformat(), pc.max(ts).as_py().isoformat())


def write_snapshots(tables: dict[str, pa.Table], data_dir: Path) -> None:
    for name, table in tables.items():
        write_parquet_atomic(table, Path(data_dir) / f"{name}.parquet")
