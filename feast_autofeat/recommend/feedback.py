"""Feedback in, fresh features out: ``Recommender.record_feedback(events)`` and ``POST /feedback``.

An event is ``{user_id, item_id, event_type, event_timestamp[, rating]}`` (the dataset's event types; a rating
where the dataset has one; an ISO 8601 time, naive = UTC). A batch of events is applied whole or not at all:

1. **Validated**, every event before anything is written: unknown or missing fields, non-integer ids, ids the
   store does not know (the users and items tables), unknown event types, ratings out of range, unparseable
   times or times more than ``MAX_FUTURE`` ahead of the clock. A ``FeedbackError`` names each offending event.
2. **Appended to the event log** (``data/interactions/``, the ``interactions`` source every snapshot, training
   set and refresh reads) as one parquet part, written to a hidden file, fsynced and renamed into place.
3. **Pushed online** to the view of Feast's ``user_recent_items_push`` push source: each user's ``recent_items``
   (positives, newest first by event time), ``recent_times`` and ``seen_items`` (any event), merged with what
   the online store holds. The next ``recommend`` reads them, so its session embedding and its
   never-recommend-again set already include the events.

   On a single Redis server the merge is one optimistic transaction in Feast's own layout
   (``feast.online_lists.RedisListRows``: WATCH the users' keys, read, merge, MULTI/EXEC, redone if another
   writer changed a key meanwhile), so any number of service processes can take feedback for the same users
   without losing an update. Other online stores (SQLite) go through Feast's ``write_to_online_store`` (what
   ``store.push`` runs for the view, minus two whole-registry scans per call) under a file lock, which
   serializes the writers of one machine.

If the push fails (Redis gone or refusing writes), the part is removed again and the error raised: nothing is
half-applied. A crash between the two leaves the events in the log, the source of truth, which
``rebuild_recent_items`` (and ``feast-autofeat refresh``) turns back into the online lists.

Online rows are stamped with the write time (at least 1 µs after the stored row, as Feast's Redis writer drops
writes that are not newer); ``seen_items`` keeps the newest ``SEEN_ITEMS`` by arrival.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feast_autofeat.datasets import get_spec, load_manifest
from feast_autofeat.datasets.base import PREPARED_PART, event_log_dir
from feast_autofeat.feast.online_lists import RedisListRows
from feast_autofeat.feast.writer import single_redis
from feast_autofeat.features.snapshots import RECENT_FIELDS, RECENT_ITEMS, SEEN_ITEMS, connect, fetch_arrow
from feast_autofeat.models.base import SchemaError

PUSH_SOURCE = "user_recent_items_push"
RECENT_VIEW = "user_recent_items"
MAX_FUTURE = timedelta(minutes=5)  # clock skew tolerated between a client and the service
MAX_ERRORS = 5  # offending events named per error message
LIST_FEATURES = tuple(name for name, _ in RECENT_FIELDS)


class FeedbackError(SchemaError):
    """The batch of events is invalid; nothing of it was written."""


@dataclass(frozen=True)
class FeedbackResult:
    events: int
    positives: int  # events that count as positives (they enter recent_items)
    users: int
    part: str  # the event-log part holding them
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _us(ts: pd.Series) -> np.ndarray:
    return ts.dt.tz_convert("UTC").to_numpy("datetime64[us]").astype(np.int64)


Lists = dict[str, tuple[np.ndarray, np.ndarray]]  # per feature: every user's list concatenated, and its length


def _flat(lists: list) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated values of per-user lists (None = empty) and each list's length."""
    arrays = [np.zeros(0, np.int64) if x is None else np.asarray(x, np.int64) for x in lists]
    lens = np.fromiter(map(len, arrays), np.int64, len(arrays))
    return (np.concatenate(arrays) if arrays else np.zeros(0, np.int64)), lens


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    values, bounds = flat.tolist(), np.r_[0, np.cumsum(lengths)].tolist()
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FeedbackLog:
    """Validates feedback, appends it to the event log and pushes the fresh lists online (see module doc)."""

    def __init__(self, store, repo: str | Path, clock: Callable[[], datetime] | None = None):
        self.store = store
        self.data_dir = Path(repo) / "data"
        self.spec = get_spec(load_manifest(self.data_dir).dataset)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.log_dir = event_log_dir(self.data_dir)
        prepared = self.log_dir / PREPARED_PART
        if not prepared.exists():
            raise FeedbackError(f"{prepared} not found: the event log is missing; re-run `feast-autofeat prepare`.")
        self.schema = pq.read_schema(prepared).remove_metadata()
        self.fields = ["user_id", "item_id", "event_type", "event_timestamp"]
        if self.spec.rating_column:
            self.fields.insert(3, self.spec.rating_column)
        self.users = self._ids("users", "user_id")
        self.items = self._ids("items", "item_id")
        self._lock = threading.Lock()
        self._sql_lock = threading.Lock()
        self._con = None
        config = store.config
        self._rows = RedisListRows(config, RECENT_VIEW, "user_id", LIST_FEATURES) if single_redis(config) else None

    def _ids(self, source: str, key: str) -> np.ndarray:
        path = self.store.get_data_source(source).path
        return np.unique(pq.read_table(path, columns=[key]).column(key).to_numpy())

    # ---- validation (vectorized; nothing is written before every event passed)
    def validate(self, events) -> pd.DataFrame:
        """The events as a frame in the log's schema, or a ``FeedbackError`` naming what is wrong and where."""
        df = self._frame(events)
        problems: list[str] = []

        def bad(mask: np.ndarray, what: Callable[[int], str]) -> None:
            rows = np.flatnonzero(mask)
            problems.extend(f"event {i}: {what(i)}" for i in rows[:MAX_ERRORS])
            if len(rows) > MAX_ERRORS:
                problems.append(f"... and {len(rows) - MAX_ERRORS} more events like that")

        ids = {}
        for col, known, table in (("user_id", self.users, "users"), ("item_id", self.items, "items")):
            values = df[col]
            if pd.api.types.is_integer_dtype(values) and not pd.api.types.is_bool_dtype(values):
                ok = np.ones(len(df), bool)
            else:
                ok = values.map(lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)))
                ok = ok.to_numpy(bool)
            bad(~ok, lambda i, c=col: f"{c} must be an integer, got {df[c].iloc[i]!r}")
            arr = np.where(ok, pd.to_numeric(values.where(ok, 0), errors="coerce"), 0).astype(np.int64)
            bad(ok & ~np.isin(arr, known), lambda i, c=col, a=arr, t=table: (
                f"{c} {a[i]} is unknown (not in the {t} table); add it to the {t} table and re-run "
                "`feast-autofeat prepare`, or drop the event"))
            ids[col] = arr

        types = self.spec.event_types
        et = df["event_type"]
        bad(~et.isin(types).to_numpy(bool), lambda i: f"event_type {et.iloc[i]!r} is not one of {list(types)}")

        rating = self.spec.rating_column
        if rating:
            r = pd.to_numeric(df[rating], errors="coerce").to_numpy(np.float64)
            lo, hi = self.spec.rating_range or (-math.inf, math.inf)
            bad(~(np.isfinite(r) & (r >= lo) & (r <= hi)),
                lambda i: f"{rating} must be a number in [{lo:g}, {hi:g}], got {df[rating].iloc[i]!r}")

        raw = df["event_timestamp"]
        if pd.api.types.is_datetime64_any_dtype(raw):
            ts = raw.dt.tz_localize("UTC") if raw.dt.tz is None else raw.dt.tz_convert("UTC")
        else:
            text = raw.map(lambda v: isinstance(v, (str, datetime))).to_numpy(bool)
            ts = pd.to_datetime(raw.where(text, None), utc=True, errors="coerce", format="ISO8601")
            ts = ts.where(text, pd.NaT)
        latest = pd.Timestamp(self.clock()) + MAX_FUTURE
        bad(ts.isna().to_numpy(bool),
            lambda i: f"event_timestamp {raw.iloc[i]!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)")
        bad((ts > latest).to_numpy(bool), lambda i: (
            f"event_timestamp {ts.iloc[i].isoformat()} is more than {MAX_FUTURE} ahead of the service's clock "
            f"({latest - MAX_FUTURE:%Y-%m-%dT%H:%M:%SZ}); send the time the event happened"))
        if problems:
            raise FeedbackError(f"{len(df)} event(s) rejected, none recorded: " + "; ".join(problems) + ".")

        out = pd.DataFrame({"user_id": ids["user_id"], "item_id": ids["item_id"], "event_type": et.astype(str)})
        if rating:
            out[rating] = r
        out["event_timestamp"] = ts.dt.as_unit("us")
        return out

    def _frame(self, events) -> pd.DataFrame:
        if isinstance(events, pd.DataFrame):
            df = events.reset_index(drop=True)
        else:
            if isinstance(events, Mapping):
                events = [events]
            if not isinstance(events, (list, tuple)) or not all(isinstance(e, Mapping) for e in events):
                raise FeedbackError("feedback must be a list of events, each a mapping with the fields "
                                    f"{self.fields}.")
            df = pd.DataFrame(list(events))
        if df.empty:
            raise FeedbackError(f"no events given; send at least one with the fields {self.fields}.")
        unknown = [c for c in df.columns if c not in self.fields]
        missing = [c for c in self.fields if c not in df.columns]
        if unknown or missing:
            raise FeedbackError(f"{len(df)} event(s) rejected, none recorded: "
                                + (f"unknown field(s) {unknown}; " if unknown else "")
                                + (f"missing field(s) {missing}; " if missing else "")
                                + f"an event has exactly the fields {self.fields}.")
        holes = df[self.fields].isna().any(axis=1).to_numpy()
        if holes.any():
            i = int(np.flatnonzero(holes)[0])
            empty = [c for c in self.fields if pd.isna(df[c].iloc[i])]
            raise FeedbackError(f"{int(holes.sum())} event(s) lack a value, none recorded: event {i} has no "
                                f"{empty}.")
        return df

    def positives(self, events: pd.DataFrame) -> np.ndarray:
        """Which events count as positives (the dataset's own predicate, evaluated by DuckDB on one connection
        per log: connecting costs more than the query)."""
        with self._sql_lock:
            if self._con is None:
                self._con = connect()
            self._con.register("e", pa.Table.from_pandas(events, preserve_index=False))  # arrow registers fast
            try:
                out = fetch_arrow(self._con, f"SELECT coalesce(({self.spec.positive}), false) AS p FROM e")
            finally:
                self._con.unregister("e")
        return out["p"].to_numpy(zero_copy_only=False).astype(bool)

    # ---- apply
    def record(self, events) -> FeedbackResult:
        """Validate, append to the log, push online; all or nothing (see the module doc)."""
        t0 = time.perf_counter()
        ev = self.validate(events)
        pos = self.positives(ev)
        users = np.unique(ev["user_id"].to_numpy())
        part = self._append(ev)
        try:
            if self._rows is not None:  # Redis: one optimistic transaction, redone if another writer interfered
                self._rows.update(users, lambda stored, stamps: self._merge(ev, pos, users, stored, stamps))
            else:
                with self._lock, _file_lock(self.data_dir / ".feedback.lock"):
                    self.store.write_to_online_store(RECENT_VIEW, self.merged_frame(ev, pos))
        except BaseException:
            part.unlink(missing_ok=True)  # undo the append: the batch is applied whole or not at all
            raise
        return FeedbackResult(len(ev), int(pos.sum()), len(users), part.name, time.perf_counter() - t0)

    def _append(self, ev: pd.DataFrame) -> Path:
        table = pa.Table.from_pandas(ev, preserve_index=False).select(self.schema.names).cast(self.schema)
        name = f"feedback-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        tmp, path = self.log_dir / f".{name}.tmp", self.log_dir / name
        try:
            pq.write_table(table, tmp, compression="zstd")
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync(self.log_dir, directory=True)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def merged_frame(self, ev: pd.DataFrame, pos: np.ndarray) -> pd.DataFrame:
        """The push rows for a validated batch, merged with what Feast's ``get_online_features`` returns (the
        path for online stores other than a single Redis; Redis merges inside ``RedisListRows.update``)."""
        users = np.unique(ev["user_id"].to_numpy())
        resp = self.store.get_online_features(features=[f"{RECENT_VIEW}:{f}" for f in LIST_FEATURES],
                                              entity_rows={"user_id": users.tolist()})
        out = resp.to_dict()
        names = list(resp.proto.metadata.feature_names.val)
        stamps = resp.proto.results[names.index(LIST_FEATURES[0])].event_timestamps
        stored_us = np.array([t.seconds * 1_000_000 + t.nanos // 1000 for t in stamps], np.int64)
        stored = {f: _flat(out[f]) for f in LIST_FEATURES}
        lists, stamp = self._merge(ev, pos, users, stored, stored_us)
        rows = {f: _split(*lists[f]) for f in LIST_FEATURES}
        return pd.DataFrame({"user_id": users, **rows, "event_timestamp": pd.to_datetime(stamp, unit="us", utc=True)})

    def _merge(self, ev: pd.DataFrame, pos: np.ndarray, users: np.ndarray, stored: Lists,
               stored_us: np.ndarray) -> tuple[Lists, np.ndarray]:
        return merge_lists(users, stored, stored_us, ev["user_id"].to_numpy(np.int64),
                           ev["item_id"].to_numpy(np.int64), _us(ev["event_timestamp"]), pos,
                           now_us=int(pd.Timestamp(self.clock()).value // 1000))


def merge_lists(users: np.ndarray, stored: Lists, stored_us: np.ndarray, ev_u: np.ndarray, ev_i: np.ndarray,
                ev_t: np.ndarray, pos: np.ndarray, now_us: int) -> tuple[Lists, np.ndarray]:
    """Each user's stored lists merged with a batch of events, vectorized over all users.

    ``users``: the batch's users, sorted; ``stored``: per feature the users' stored lists concatenated and their
    lengths; ``stored_us``: their rows' stamps (epoch µs, 0 = none); ``ev_*``: the events (user, item, time in
    epoch µs) and ``pos`` which of them are positives. Returns the merged lists in the same form and each row's
    new stamp: the newest of its events, ``now_us``, and 1 µs after the stored stamp (so it is never older)."""
    (recent, n_recent), (times, n_times), (seen, n_seen) = (stored[f] for f in LIST_FEATURES)
    if not np.array_equal(n_recent, n_times):
        raise FeedbackError("user_recent_items online is inconsistent (recent_items and recent_times differ in "
                            "length): rebuild it with `feast-autofeat refresh` or `feast materialize`.")

    # recent_items: positives, newest time first (ties: larger item id first, as in the prepared table)
    u = np.concatenate([np.repeat(users, n_recent), ev_u[pos]])
    i = np.concatenate([recent, ev_i[pos]])
    t = np.concatenate([times, ev_t[pos]])
    order = np.lexsort((-i, -t, u))
    u, i, t = u[order], i[order], t[order]
    keys, batch = _pair_keys(users, (u, i), (ev_u, ev_i))
    keep = _first_of_pair(keys, np.unique(batch))
    u, i, t = u[keep], i[keep], t[keep]
    keep = _rank_in_group(u) < RECENT_ITEMS
    r_u, r_i, r_t = u[keep], i[keep], t[keep]

    # seen_items: the batch's items (newest first), then what was stored; newest SEEN_ITEMS by arrival
    order = np.lexsort((-ev_i, -ev_t))
    u = np.concatenate([ev_u[order], np.repeat(users, n_seen)])
    i = np.concatenate([ev_i[order], seen])
    order = np.argsort(u, kind="stable")
    u, i = u[order], i[order]
    keys, batch = _pair_keys(users, (u, i), (ev_u, ev_i))
    keep = _first_of_pair(keys, np.unique(batch))
    u, i = u[keep], i[keep]
    keep = _rank_in_group(u) < SEEN_ITEMS
    s_u, s_i = u[keep], i[keep]

    def lengths(group: np.ndarray) -> np.ndarray:
        return np.diff(np.r_[np.searchsorted(group, users), len(group)])

    newest = np.zeros(len(users), np.int64)
    np.maximum.at(newest, np.searchsorted(users, ev_u), ev_t)
    stamp = np.maximum(np.maximum(newest, stored_us + 1), now_us)
    n_r = lengths(r_u)
    return {"recent_items": (r_i, n_r), "recent_times": (r_t, n_r), "seen_items": (s_i, lengths(s_u))}, stamp


def _pair_keys(users: np.ndarray, *pairs: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """One int64 per (user, item) pair, equal exactly when the pairs are (``users``: the batch's sorted users,
    which every ``u`` is one of)."""
    items = np.concatenate([i for _, i in pairs])
    if len(items) and (items.min() < 0 or int(items.max()) >= (1 << 62) // max(len(users), 1)):
        _, dense = np.unique(items, return_inverse=True)  # ids too large to combine: rank them first
        cuts = np.cumsum([len(i) for _, i in pairs])[:-1]
        pairs = tuple((u, d) for (u, _), d in zip(pairs, np.split(dense, cuts)))
    width = int(max((i.max() for _, i in pairs if len(i)), default=0)) + 1
    return [np.searchsorted(users, u).astype(np.int64) * width + i for u, i in pairs]


def _first_of_pair(keys: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each pair key, in array order. A stored list holds each pair once, so
    only pairs of the ``batch`` (sorted unique keys) can repeat: a binary search finds them, and only those
    are sorted."""
    keep = np.ones(len(keys), bool)
    if not len(batch):
        return keep
    cand = np.flatnonzero(batch[np.minimum(np.searchsorted(batch, keys), len(batch) - 1)] == keys)
    keep[cand] = False
    keep[cand[np.unique(keys[cand], return_index=True)[1]]] = True
    return keep


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of the sorted ``group``."""
    if not len(group):
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    return np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock across processes on this machine (the embedded online store lives on one machine)."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def rebuild_recent_items(repo: str | Path) -> Path:
    """Recompute ``user_recent_items.parquet`` from the whole event log (prepared events plus feedback), so
    ``feast materialize`` (or a refresh) writes lists that include every logged event."""
    from feast_autofeat.datasets.base import write_parquet_atomic
    from feast_autofeat.features.snapshots import recent_items_table

    data_dir = Path(repo) / "data"
    spec = get_spec(load_manifest(data_dir).dataset)
    log = pq.read_table(event_log_dir(data_dir))
    path = data_dir / f"{RECENT_VIEW}.parquet"
    write_parquet_atomic(recent_items_table(log, spec), path)
    return path
