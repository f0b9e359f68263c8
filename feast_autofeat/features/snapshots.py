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


def user_behaviour_fields(spec: DatasetSpec) -> list[tuple[str, str]]:
    """(column, Feast type) of the user behaviour snapshot, in table order."""
    cols: list[tuple[str, str]] = []
    for w in WINDOWS:
        cols.append((f"events_{w}d", "Int64"))
        cols += [(f"{s}_{w}d", "Int64") for s, _ in spec.signals]
        cols += [(f"cat_{c}_{w}d", "Int64") for c, _ in spec.categories]
        cols.append((f"distinct_items_{w}d", "Int64"))
    if spec.rating_column:
        cols.append(("mean_rating_30d", "Float64"))
    cols.append(("days_since_last_event", "Float64"))
    return cols


def item_popularity_fields(spec: DatasetSpec) -> list[tuple[str, str]]:
    """(column, Feast type) of the item popularity snapshot; prefixed so names never collide with users'."""
    cols: list[tuple[str, str]] = []
    for w in WINDOWS:
        cols.append((f"{ITEM_PREFIX}events_{w}d", "Int64"))
        cols += [(f"{ITEM_PREFIX}{s}_{w}d", "Int64") for s, _ in spec.signals]
        cols.append((f"{ITEM_PREFIX}distinct_users_{w}d", "Int64"))
    if spec.rating_column:
        cols.append((f"{ITEM_PREFIX}mean_rating_30d", "Float64"))
    cols.append((f"{ITEM_PREFIX}days_since_last_event", "Float64"))
    return cols


def _snapshot_sql(spec: DatasetSpec, key: str, other: str, prefix: str, with_categories: bool,
                  until_day: int) -> str:
    signals = [(_ident(s), pred) for s, pred in spec.signals]
    cats = [(_ident(c), pred) for c, pred in spec.categories] if with_categories else []
    rating = spec.rating_column
    flag_cols = [f"sum(CAST(({pred}) AS BIGINT)) AS s_{s}" for s, pred in signals]
    flag_cols += [f"sum(CAST(({pred}) AS BIGINT)) AS c_{c}" for c, pred in cats]
    if rating:
        flag_cols += [f"sum(e.{rating}) AS r_sum", f"count(e.{rating}) AS r_n"]
    distinct = "items" if other == "item_id" else "users"

    aggs = []
    for w in WINDOWS:
        flt = f" FILTER (WHERE k <= {w})" if w < 30 else ""
        aggs.append(f"CAST(coalesce(sum(n){flt}, 0) AS BIGINT) AS {prefix}events_{w}d")
        aggs += [f"CAST(coalesce(sum(s_{s}){flt}, 0) AS BIGINT) AS {prefix}{s}_{w}d" for s, _ in signals]
        aggs += [f"CAST(coalesce(sum(c_{c}){flt}, 0) AS BIGINT) AS {prefix}cat_{c}_{w}d" for c, _ in cats]
        aggs.append(f"CAST(count(DISTINCT {other}){flt} AS BIGINT) AS {prefix}distinct_{distinct}_{w}d")
    if rating:
        aggs.append(f"CAST(sum(r_sum) / nullif(sum(r_n), 0) AS DOUBLE) AS {prefix}mean_rating_30d")
    aggs.append(f"(snap_day * 86400.0 - max(last_s)) / 86400.0 AS {prefix}days_since_last_event")
    return f"""
    WITH grouped AS (
        SELECT e.{key}, e.{other}, CAST(floor(epoch(e.event_timestamp) / 86400) AS BIGINT) AS day,
               count(*) AS n, max(epoch(e.event_timestamp)) AS last_s,
               {", ".join(flag_cols)}
        FROM interactions e JOIN items i ON e.item_id = i.item_id
        GROUP BY ALL
    ), fanned AS (
        SELECT g.*, k, day + k AS snap_day FROM grouped g, range(1, 31) AS r(k)
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
    con.execute("SET TimeZone = 'UTC'; SET enable_progress_bar = false")
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
        for name, key, other, prefix, cats in (
            ("user_behaviour", "user_id", "item_id", "", True),
            ("item_popularity", "item_id", "user_id", ITEM_PREFIX, False),
        ):
            out[name] = fetch_arrow(con, _snapshot_sql(spec, key, other, prefix, cats, until_day))
        return out
    finally:
        con.close()


def snapshot_range(tables: dict[str, pa.Table]) -> tuple[str, str]:
    ts = tables["user_behaviour"]["event_timestamp"]
    if len(ts) == 0:
        return ("", "")
    return (pc.min(ts).as_py().isoformat(), pc.max(ts).as_py().isoformat())


def write_snapshots(tables: dict[str, pa.Table], data_dir: Path) -> None:
    for name, table in tables.items():
        write_parquet_atomic(table, Path(data_dir) / f"{name}.parquet")
