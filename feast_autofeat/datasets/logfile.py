"""Your own interaction log (CSV or parquet) -> the tables a prepared feature repo reads.

``feast-autofeat prepare --interactions FILE [--users FILE] [--items FILE] --columns
user_id=COL,item_id=COL,event_timestamp=COL[,rating=COL][,event_type=COL] [--split COL=SEP ...]
[--positive EXPR]``

- **Ids** keep their type: a column of integers (or of digit strings in a CSV) stays Int64, anything else is a
  String id. The users and items files carry their ids in columns of the same names as the log's mapped ones;
  they are optional (profiles then empty). Every user and item of the log is in the prepared users and items
  tables; users and items only the files name are kept too (the store knows them).
- **Times**: epoch seconds, milliseconds or microseconds, or ISO 8601 strings (``tables.parse_timestamps``).
- **Categories** (behaviour snapshots' per-category counts and the recommender's category term) come from the
  items file: 0/1 columns as they are; strings of at most ``MAX_VALUES`` distinct values, one category per value;
  list columns and delimiter-separated strings (``--split genres='|'``) as 0/1 columns ``<col>_<value>`` of
  their ``MAX_VALUES`` most frequent values.
- **Positives**: ``--positive`` (a SQL predicate over the log's mapped columns, e.g. ``rating >= 4`` or
  ``event_type IN ('click', 'purchase')``); by default the top quarter of the rating scale when there is a
  rating, else every event.

Stated outcomes for awkward logs: an empty log, or one with a single user or a single item, is an error (there
is nothing to learn); exact duplicate rows are dropped and counted in the manifest; a missing column is named
with the file's columns; ids or times that do not parse are counted, with the first offending row. Columns the
mapping does not name are not kept.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feast_autofeat.datasets.base import DatasetSpec
from feast_autofeat.errors import DataError
from feast_autofeat.tables import parse_timestamps, predicate_mask, read_table

NAME = "log"
ROLES = ("user_id", "item_id", "event_timestamp", "rating", "event_type")
REQUIRED = ("user_id", "item_id", "event_timestamp")
MAX_VALUES = 64  # categories per string or list column
MAX_SIGNALS = 16  # event types counted in behaviour snapshots
DEFAULT_EVENT = "interaction"  # the event type of a log without one


def parse_columns(text: str) -> dict[str, str]:
    """``user_id=COL,item_id=COL,...`` -> {role: column}; unknown roles and missing required ones are errors."""
    mapping = {}
    for part in [p for p in (text or "").split(",") if p.strip()]:
        role, sep, column = part.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or not column:
            raise DataError(f"--columns entry {part.strip()!r}: write ROLE=COLUMN, e.g. user_id=customer.")
        if role not in ROLES:
            raise DataError(f"--columns role {role!r} is not one of {', '.join(ROLES)}.")
        mapping[role] = column
    missing = [r for r in REQUIRED if r not in mapping]
    if missing:
        raise DataError(f"--columns must map {', '.join(missing)} (e.g. --columns user_id=user,item_id=item,"
                        "event_timestamp=ts).")
    return mapping


def parse_split(items: list[str] | None) -> dict[str, str]:
    """``["genres=|", ...]`` -> {column: separator}."""
    out = {}
    for item in items or []:
        column, sep, separator = item.partition("=")
        if not sep or not column.strip() or not separator:
            raise DataError(f"--split {item!r}: write COLUMN=SEPARATOR, e.g. --split 'genres=|'.")
        out[column.strip()] = separator
    return out


def _ident(text: str, taken: set[str]) -> str:
    """A feature-name-safe identifier for ``text`` (letters, digits, '_'), unique among ``taken``."""
    base = re.sub(r"[^0-9a-zA-Z]+", "_", str(text)).strip("_").lower() or "value"
    if base[0].isdigit():
        base = f"v_{base}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _ids(values: pd.Series, what: str) -> pd.Series:
    """Ids as Int64 when every one is an integer (or a digit string), else as strings; missing ids are an error."""
    if values.isna().any():
        first = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"{what}: {int(values.isna().sum())} rows have no id; the first is row {first}.")
    if pd.api.types.is_integer_dtype(values):
        return values.astype(np.int64)
    text = values.astype(str).str.strip()
    if text.str.fullmatch(r"-?\d{1,18}").all():
        return text.astype(np.int64)
    if pd.api.types.is_float_dtype(values):
        raise DataError(f"{what}: ids must be integers or strings, got numbers such as {values.iloc[0]!r}.")
    return text


def _same_kind(ids: pd.Series, like: pd.Series, what: str) -> pd.Series:
    """``ids`` (from a users or items file) converted to the log's id kind."""
    if pd.api.types.is_integer_dtype(like):
        if not pd.api.types.is_integer_dtype(ids):
            raise DataError(f"{what}: the log's ids are integers, this file's are not (e.g. {ids.iloc[0]!r}).")
        return ids
    return ids.astype(str)


def _require(df: pd.DataFrame, columns: list[str], path: Path, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{what} {path.name} has no column(s) {missing} (its columns: "
                        f"{', '.join(map(str, df.columns[:20]))}{' ...' if len(df.columns) > 20 else ''}); fix "
                        "--columns or the file.")


def _profile(df: pd.DataFrame, key: str, split: dict[str, str], categories: bool
             ) -> tuple[pd.DataFrame, list[tuple[str, str]], list[tuple[str, str]]]:
    """A users or items file's columns as profile features: (table, [(column, Feast type)], [(category, SQL
    predicate over ``i``)])."""
    out = pd.DataFrame({key: df[key]})
    fields, cats, taken, cat_names = [], [], {key, "created_timestamp"}, set()
    for col in [c for c in df.columns if c != key]:
        s = df[col]
        if col in split:
            s = s.astype("string").str.split(split[col], regex=False)
        if s.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():  # lists: 0/1 columns of top values
            lists = s.map(lambda v: [str(x).strip() for x in v if str(x).strip()]
                          if isinstance(v, (list, tuple, np.ndarray)) else [])
            counts = pd.Series([x for v in lists for x in v]).value_counts()
            for value in counts.index[:MAX_VALUES]:
                name = _ident(f"{col}_{value}", taken)
                cat_names.add(name)
                out[name] = lists.map(lambda v, x=value: int(x in v)).astype(np.int64)
                fields.append((name, "Int64"))
                cats.append((name, f"i.{name} = 1"))
            continue
        name = _ident(col, taken)
        if pd.api.types.is_bool_dtype(s):
            out[name] = s.astype(np.int64)
            fields.append((name, "Int64"))
        elif pd.api.types.is_numeric_dtype(s):
            if pd.api.types.is_integer_dtype(s) and not s.isna().any():
                out[name] = s.astype(np.int64)
                fields.append((name, "Int64"))
            else:
                out[name] = s.astype(np.float64)
                fields.append((name, "Float64"))
            if categories and s.notna().all() and s.isin((0, 1)).all() and s.nunique() == 2:
                cats.append((name, f"i.{name} = 1"))
        else:
            text = s.astype("string")
            out[name] = text.astype(object).where(text.notna(), None)
            fields.append((name, "String"))
            values = text.dropna().unique()
            if categories and 2 <= len(values) <= MAX_VALUES:
                for v in sorted(values):
                    quoted = str(v).replace("'", "''")
                    cats.append((_ident(f"{name}_{v}", cat_names), f"i.{name} = '{quoted}'"))
    return out, fields, cats


def load_log(interactions: str | Path, columns: dict[str, str], users: str | Path | None = None,
             items: str | Path | None = None, split: dict[str, str] | None = None,
             positive: str | None = None) -> tuple[dict[str, pa.Table], DatasetSpec, dict]:
    """Read and check a log (and optional users / items files): (tables, their spec, params for the manifest)."""
    split = split or {}
    path = Path(interactions)
    raw = read_table(path, "--interactions", (columns["user_id"], columns["item_id"]))
    _require(raw, list(columns.values()), path, "the interaction log")
    if raw.empty:
        raise DataError(f"the interaction log {path.name} is empty: there is nothing to learn from.")
    ev = pd.DataFrame({"user_id": _ids(raw[columns["user_id"]], f"{path.name} column {columns['user_id']}"),
                       "item_id": _ids(raw[columns["item_id"]], f"{path.name} column {columns['item_id']}")})
    ev["event_type"] = (raw[columns["event_type"]].astype("string").fillna(DEFAULT_EVENT).astype(str)
                        if "event_type" in columns else DEFAULT_EVENT)
    if "rating" in columns:
        r = pd.to_numeric(raw[columns["rating"]], errors="coerce")
        bad = r.isna() & raw[columns["rating"]].notna()
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path.name} column {columns['rating']}: {int(bad.sum())} values are not numbers; the "
                            f"first is row {first}: {str(raw[columns['rating']].iloc[first])[:40]!r}.")
        ev["rating"] = r.astype(np.float64)
    ev["event_timestamp"] = parse_timestamps(raw[columns["event_timestamp"]],
                                             f"{path.name} column {columns['event_timestamp']}")
    before = len(ev)
    ev = ev.drop_duplicates(ignore_index=True)
    duplicates = before - len(ev)
    if ev.user_id.nunique() < 2 or ev.item_id.nunique() < 2:
        raise DataError(f"the interaction log {path.name} has {ev.user_id.nunique()} user(s) and "
                        f"{ev.item_id.nunique()} item(s): a recommender needs at least two of each.")
    ev = ev.sort_values(["event_timestamp", "user_id", "item_id"], kind="stable", ignore_index=True)
    t0 = ev.event_timestamp.min()

    def side(file, key: str, role: str, categories: bool):
        ids = np.unique(ev[key].to_numpy())
        first = ev.groupby(key)["event_timestamp"].min()
        if file is None:
            table, fields, cats = pd.DataFrame({key: ids}), [], []
        else:
            fpath = Path(file)
            df = read_table(fpath, f"--{role}", (columns[key],))
            _require(df, [columns[key]], fpath, f"the {role} file")
            df = df.rename(columns={columns[key]: key})
            df[key] = _same_kind(_ids(df[key], f"{fpath.name} column {columns[key]}"), ev[key], fpath.name)
            df = df.drop_duplicates(subset=[key], keep="last", ignore_index=True)
            table, fields, cats = _profile(df, key, split if role == "items" else {}, categories)
            extra = np.setdiff1d(ids, table[key].to_numpy())
            if len(extra):  # every logged user / item is known, with an empty profile where the file lacks it
                table = pd.concat([table, pd.DataFrame({key: extra})], ignore_index=True)
                flags = {name for name, _ in cats}
                for name, dtype in fields:
                    if name in flags:  # a category the file does not give the item: not in it
                        table[name] = table[name].fillna(0).astype(np.int64)
                    elif dtype == "Int64":
                        table[name] = table[name].astype("Int64")
        table["created_timestamp"] = table[key].map(first).fillna(t0)
        table = table.sort_values(key, ignore_index=True)
        return table, fields, cats

    users_t, user_fields, _ = side(users, "user_id", "users", False)
    items_t, item_fields, categories = side(items, "item_id", "items", True)
    types = sorted(ev.event_type.unique())
    names: set[str] = set()
    signals = [(_ident(f"type_{t}", names), "e.event_type = '{}'".format(t.replace("'", "''")))
               for t in types[:MAX_SIGNALS]] if len(types) > 1 else []
    rating_range = (float(ev.rating.min()), float(ev.rating.max())) if "rating" in ev else None
    if positive is None:
        positive = "true"
        if rating_range is not None and rating_range[1] > rating_range[0]:
            lo, hi = rating_range
            positive = f"rating >= {hi - 0.25 * (hi - lo):g}"  # the top quarter of the scale (4+ of 1-5)
    positive = positive.strip() or "true"
    share = _positive_share(ev, positive)
    if positive != "true":
        signals.append((_ident("positive", names), positive))
    spec = DatasetSpec(name=NAME, signals=tuple(signals), categories=tuple(categories[:MAX_VALUES]),
                       user_profile=tuple(user_fields), item_profile=tuple(item_fields),
                       rating_column="rating" if "rating" in ev else None, positive=positive,
                       description=f"interaction log {path.name}", event_types=tuple(types),
                       rating_range=rating_range)
    params = {"interactions": path.name, "users": Path(users).name if users else None,
              "items": Path(items).name if items else None, "columns": columns, "split": split,
              "duplicates_dropped": duplicates, "positive_share": share}
    tables = {"interactions": pa.Table.from_pandas(ev, preserve_index=False),
              "users": pa.Table.from_pandas(users_t, preserve_index=False),
              "items": pa.Table.from_pandas(items_t, preserve_index=False)}
    return tables, spec, params


def _positive_share(ev: pd.DataFrame, positive: str) -> float:
    """The share of events the ``positive`` predicate accepts; an invalid predicate, or one that accepts no
    event, is a ``DataError`` naming it."""
    mask = predicate_mask(ev, positive, "--positive")
    if not mask.any():
        raise DataError(f"--positive {positive!r} accepts none of the {len(mask):,} events: nothing would count as "
                        "a positive interaction.")
    return float(mask.mean())
