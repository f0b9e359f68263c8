"""Feedback in, fresh features out: ``Recommender.record_feedback(events)`` and ``POST /feedback``.

An event is ``{user_id, item_id, event_timestamp[, event_type][, rating]}`` (``event_type`` and ``rating`` where
the declared interaction log has those columns; ids of the user and item entities' key types; an ISO 8601 time,
naive = UTC). A batch of events is applied whole or not at all:

1. **Validated**, every event before anything is written: unknown or missing fields, ids of the wrong type or
   out of range, ids the store does not know (the log's and the declared views' users and items), event types
   outside the declared ones, ratings out of the declared range, unparseable times or times more than
   ``MAX_FUTURE`` ahead of the clock. A ``FeedbackError`` names each offending event.
2. **Appended to the event log** (the declared interaction source's directory, which every training set and
   refresh reads) as one parquet part in the log's own schema and column names, written to a hidden file,
   fsynced and renamed into place.
3. **Pushed online** to the declared history view: each user's ``recent_items`` (positives, newest first by
   event time), ``recent_times`` and ``seen_items`` (any event), merged with what the online store holds. The
   next ``recommend`` reads them, so its session embedding and its never-recommend-again set already include
   the events.

   On a single Redis server the merge is one optimistic transaction in Feast's own layout
   (``feast.online_lists.RedisListRows``: WATCH the users' keys, read, merge, MULTI/EXEC, redone if another
   writer changed a key meanwhile), so any number of service processes can take feedback for the same users
   without losing an update. Other online stores (SQLite) go through Feast's ``write_to_online_store`` (what
   ``store.push`` runs for the view, minus two whole-registry scans per call) under a file lock, which
   serializes the writers of one machine.

If the push fails (Redis gone or refusing writes), the part is removed again and the error raised: nothing is
half-applied. A crash between the two leaves the events in the log, the source of truth, which
``rebuild_history`` (and ``feast-autofeat refresh``) turns back into the online lists.

Online rows are stamped with the write time (at least 1 µs after the stored row, as Feast's Redis writer drops
writes that are not newer); ``seen_items`` keeps the newest ``SEEN_ITEMS`` by arrival.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
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

from feast_autofeat.feast.encoding import Int64ListCodec, list_codec
from feast_autofeat.feast.interactions import HISTORY_FIELDS
from feast_autofeat.feast.offline import ITEM, TS, USER, read_events, source_rows
from feast_autofeat.feast.online_lists import RedisListRows
from feast_autofeat.feast.writer import single_redis
from feast_autofeat.features.snapshots import RECENT_ITEMS, SEEN_ITEMS, connect, fetch_arrow
from feast_autofeat.ids import IdError, parse_id
from feast_autofeat.models.base import SchemaError

RESULT_META = b"autofeat.feedback_result"
MAX_FUTURE = timedelta(minutes=5)  # clock skew tolerated between a client and the service
MAX_ERRORS = 5  # offending events named per error message
LIST_FEATURES = HISTORY_FIELDS
EVENT_TYPE, RATING = "event_type", "rating"  # the event fields of the API, mapped to the log's columns


class FeedbackError(SchemaError):
    """The batch of events is invalid; nothing of it was written."""


@dataclass(frozen=True)
class FeedbackResult:
    events: int  # events recorded (exact duplicates inside the batch count once)
    positives: int  # events that count as positives (they enter recent_items)
    users: int
    part: str  # the event-log part holding them
    seconds: float
    duplicates: int = 0  # exact copies of another event of the same batch: recorded once
    replayed: bool = False  # the idempotency key was recorded before: nothing written now, the first result

    def to_dict(self) -> dict:
        return asdict(self)


IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def idempotency_name(key: str) -> str:
    """The log part's name for a batch's idempotency key (a hash: the key is the client's text), or a
    ``FeedbackError`` for a key that is not 1-128 characters of letters, digits and ``._:-``."""
    if not isinstance(key, str) or not IDEMPOTENCY_KEY.fullmatch(key):
        raise FeedbackError("Idempotency-Key must be 1-128 characters of letters, digits and . _ : - (a UUID "
                            "fits).")
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _brief(value, limit: int = 40) -> str:
    """``repr`` of an offending value, cut short: errors name the problem, they do not echo long input back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _us(ts: pd.Series) -> np.ndarray:
    return ts.dt.tz_convert("UTC").to_numpy("datetime64[us]").astype(np.int64)


Lists = dict[str, tuple[np.ndarray, np.ndarray]]  # per feature: every user's list concatenated, and its length


def _flat(lists: list, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated values of per-user lists (None = empty) and each list's length."""
    arrays = [np.zeros(0, dtype) if x is None else np.asarray(x, dtype) for x in lists]
    lens = np.fromiter(map(len, arrays), np.int64, len(arrays))
    return (np.concatenate(arrays) if arrays else np.zeros(0, dtype)), lens


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    values, bounds = flat.tolist(), np.r_[0, np.cumsum(lengths)].tolist()
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def log_directory(decl) -> Path:
    """The interaction source's directory of parquet parts (where feedback appends), or an error saying why
    feedback cannot append to it."""
    inter = decl.interactions
    path = getattr(inter.source, "path", None)
    if not path or "://" in str(path):
        raise FeedbackError(f"feedback appends parquet parts to the interaction log, but {inter.name} is not a local "
                            "file source; declare it as a FileSource over a directory of parquet files.")
    directory = Path(path) if Path(path).is_absolute() else decl.repo_dir / path
    if not directory.is_dir():
        raise FeedbackError(f"the interaction log {inter.name} ({directory.name}) is not a directory of parquet "
                            "parts, so feedback cannot append to it; point its FileSource at a directory "
                            "(`feast-autofeat prepare` writes one).")
    return directory


class FeedbackLog:
    """Validates feedback, appends it to the event log and pushes the fresh lists online (see module doc)."""

    def __init__(self, store, decl, clock: Callable[[], datetime] | None = None):
        self.store, self.decl = store, decl
        self.inter = inter = decl.interactions
        if decl.history_name is None:
            raise FeedbackError(f"{decl.name} declares no history view: feedback has nowhere to push users' lists "
                                "(add history=history_view(...) to its two_tower declaration).")
        self.view = decl.history_name
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.log_dir = log_directory(decl)
        parts = sorted(p for p in self.log_dir.glob("*.parquet") if not p.name.startswith("."))
        if not parts:
            raise FeedbackError(f"the interaction log {inter.name} has no parquet part to take its schema from.")
        self.schema = pq.read_schema(parts[0]).remove_metadata()
        self.columns = {USER: inter.user_key, ITEM: inter.item_key, TS: inter.timestamp}
        if inter.event_type:
            self.columns[EVENT_TYPE] = inter.event_type
        if inter.rating:
            self.columns[RATING] = inter.rating
        self.fields = [USER, ITEM] + [f for f in (EVENT_TYPE, RATING) if f in self.columns] + [TS]
        self.user_kind, self.item_kind = inter.user_kind(), inter.item_kind()
        self.users, self.items = self._known_ids()
        self._lock = threading.Lock()
        self._sql_lock = threading.Lock()
        self._con = None
        config = store.config
        codecs = {"recent_items": list_codec(self.item_kind), "recent_times": Int64ListCodec(),
                  "seen_items": list_codec(self.item_kind)}
        self._rows = (RedisListRows(config, self.view, inter.user_key, LIST_FEATURES, key_kind=self.user_kind,
                                    codecs=codecs) if single_redis(config) else None)

    def _known_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """The users and items the store knows: the log's, and the declared query and item views' entities."""
        ev = read_events(self.store, self.inter)
        users = [ev[USER].to_numpy()]
        views = [self.store.get_feature_view(v.name) for v in self.decl.query_views]
        if views:
            users.append(source_rows(self.store, views, self.inter.user_key)[self.inter.user_key].to_numpy())
        items = [ev[ITEM].to_numpy()]
        views = [self.store.get_feature_view(v.name) for v in self.decl.inputs]
        if views:
            items.append(source_rows(self.store, views, self.inter.item_key)[self.inter.item_key].to_numpy())
        return np.unique(np.concatenate(users)), np.unique(np.concatenate(items))

    # ---- validation (nothing is written before every event passed)
    def validate(self, events) -> pd.DataFrame:
        """The events as a frame (the API's field names), or a ``FeedbackError`` naming what is wrong and where."""
        df = self._frame(events)
        problems: list[str] = []

        def bad(mask: np.ndarray, what: Callable[[int], str]) -> None:
            rows = np.flatnonzero(mask)
            problems.extend(f"event {i}: {what(i)}" for i in rows[:MAX_ERRORS])
            if len(rows) > MAX_ERRORS:
                problems.append(f"... and {len(rows) - MAX_ERRORS} more events like that")

        ids = {}
        for col, known, kind, entity in ((USER, self.users, self.user_kind, self.inter.user.name),
                                         (ITEM, self.items, self.item_kind, self.inter.item.name)):
            parsed, errors = [], {}
            for i, v in enumerate(df[col].tolist()):  # one check per event: a feedback batch, not a table
                try:
                    parsed.append(parse_id(v, kind, col, text=False))  # JSON has types: "42" is not 42
                except IdError as exc:
                    errors[i] = str(exc).rstrip(".")
                    parsed.append("" if kind == "string" else 0)
            bad(np.isin(np.arange(len(df)), list(errors)), lambda i, e=errors: e[i])
            arr = np.array(parsed, dtype=str if kind == "string" else np.int64)
            unknown = ~np.isin(arr, known) & ~np.isin(np.arange(len(df)), list(errors))
            bad(unknown, lambda i, c=col, a=arr, n=entity: (
                f"{c} {str(a[i])[:40]} is unknown to the store (no {n} of that id in the interaction log or the "
                "declared views); add it to their data first, or drop the event"))
            ids[col] = arr

        out = pd.DataFrame({USER: ids[USER], ITEM: ids[ITEM]})
        if EVENT_TYPE in self.columns:
            et = df[EVENT_TYPE]
            types = self.inter.event_types
            ok = et.map(lambda v: isinstance(v, str) and bool(v)).to_numpy(bool)
            if types:
                ok &= et.isin(types).to_numpy(bool)
            bad(~ok, lambda i: (f"event_type {_brief(et.iloc[i])} is not one of {list(types)}" if types
                                else "event_type must be a non-empty string"))
            out[EVENT_TYPE] = et.astype(str).to_numpy()
        if RATING in self.columns:
            r = pd.to_numeric(df[RATING], errors="coerce").to_numpy(np.float64)
            lo, hi = self.inter.rating_range or (-math.inf, math.inf)
            bad(~(np.isfinite(r) & (r >= lo) & (r <= hi)),
                lambda i: f"rating must be a number in [{lo:g}, {hi:g}], got {_brief(df[RATING].iloc[i])}")
            out[RATING] = r

        raw = df[TS]
        if pd.api.types.is_datetime64_any_dtype(raw):
            ts = raw.dt.tz_localize("UTC") if raw.dt.tz is None else raw.dt.tz_convert("UTC")
        else:
            text = raw.map(lambda v: isinstance(v, (str, datetime))).to_numpy(bool)
            ts = pd.to_datetime(raw.where(text, None), utc=True, errors="coerce", format="ISO8601")
            ts = ts.where(text, pd.NaT)
        latest = pd.Timestamp(self.clock()) + MAX_FUTURE
        bad(ts.isna().to_numpy(bool),
            lambda i: f"event_timestamp {_brief(raw.iloc[i])} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)")
        bad((ts > latest).to_numpy(bool), lambda i: (
            f"event_timestamp {ts.iloc[i].isoformat()} is more than {MAX_FUTURE} ahead of the service's clock "
            f"({latest - MAX_FUTURE:%Y-%m-%dT%H:%M:%SZ}); send the time the event happened"))
        if problems:
            raise FeedbackError(f"{len(df)} event(s) rejected, none recorded: " + "; ".join(problems) + ".")
        out[TS] = pd.Series(ts.dt.as_unit("us").array, index=out.index)
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
        unknown = [str(c)[:40] for c in df.columns if c not in self.fields]
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

    def _log_frame(self, events: pd.DataFrame) -> pd.DataFrame:
        """Validated events under the log's own column names."""
        return events.rename(columns=self.columns)

    def positives(self, events: pd.DataFrame) -> np.ndarray:
        """Which events count as positives (the declared predicate over the log's columns, evaluated by DuckDB on
        one connection per log: connecting costs more than the query)."""
        frame = events.rename(columns={k: v for k, v in self.columns.items() if k in (EVENT_TYPE, RATING)})
        with self._sql_lock:
            if self._con is None:
                self._con = connect()
            self._con.register("e", pa.Table.from_pandas(frame, preserve_index=False))  # arrow registers fast
            try:
                out = fetch_arrow(self._con, f"SELECT coalesce(({self.inter.positive}), false) AS p FROM e")
            finally:
                self._con.unregister("e")
        return out["p"].to_numpy(zero_copy_only=False).astype(bool)

    # ---- apply
    def record(self, events, idempotency_key: str | None = None) -> FeedbackResult:
        """Validate, append to the log, push online; all or nothing (see the module doc). With an
        ``idempotency_key``, a batch recorded before under the same key is not recorded again: the first
        result comes back with ``replayed=True`` (a client retrying after a timeout cannot log twice)."""
        t0 = time.perf_counter()
        ev = self.validate(events)
        n = len(ev)
        ev = ev.drop_duplicates(ignore_index=True)  # an exact copy inside one batch is one event
        if idempotency_key is None:
            return self._record(ev, n - len(ev), None, t0)
        name = f"feedback-key-{idempotency_name(idempotency_key)}.parquet"
        # one holder per key across this machine's processes: a retry waits for the attempt still in flight
        with _file_lock(self.log_dir.parent / f".{self.log_dir.name}.{name}.lock"):
            done = self.log_dir / name
            if done.exists():
                first = json.loads(pq.read_schema(done).metadata[RESULT_META])
                return FeedbackResult(**{**first, "seconds": time.perf_counter() - t0, "replayed": True})
            return self._record(ev, n - len(ev), name, t0)

    def _record(self, ev: pd.DataFrame, duplicates: int, name: str | None, t0: float) -> FeedbackResult:
        pos = self.positives(ev)
        users = np.unique(ev[USER].to_numpy())
        name = name or f"feedback-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
        result = FeedbackResult(len(ev), int(pos.sum()), len(users), name, 0.0, duplicates)
        part = self._append(ev, name, result)
        try:
            if self._rows is not None:  # Redis: one optimistic transaction, redone if another writer interfered
                self._rows.update(users, lambda stored, stamps: self._merge(ev, pos, users, stored, stamps))
            else:
                with self._lock, _file_lock(self.log_dir.parent / f".{self.log_dir.name}.feedback.lock"):
                    self.store.write_to_online_store(self.view, self.merged_frame(ev, pos))
        except BaseException:
            part.unlink(missing_ok=True)  # undo the append: the batch is applied whole or not at all
            raise
        return FeedbackResult(**{**asdict(result), "seconds": time.perf_counter() - t0})

    def _append(self, ev: pd.DataFrame, name: str, result: FeedbackResult) -> Path:
        frame = self._log_frame(ev)
        for f in self.schema:  # columns of the log feedback does not carry: null
            if f.name not in frame:
                frame[f.name] = pd.Series([None] * len(frame), dtype=object)
        table = pa.Table.from_pandas(frame, preserve_index=False).select(self.schema.names).cast(self.schema)
        table = table.replace_schema_metadata({RESULT_META: json.dumps(asdict(result))})  # what a replay returns
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
        users = np.unique(ev[USER].to_numpy())
        key = self.inter.user_key
        resp = self.store.get_online_features(features=[f"{self.view}:{f}" for f in LIST_FEATURES],
                                              entity_rows={key: users.tolist()})
        out = resp.to_dict()
        names = list(resp.proto.metadata.feature_names.val)
        stamps = resp.proto.results[names.index(LIST_FEATURES[0])].event_timestamps
        stored_us = np.array([t.seconds * 1_000_000 + t.nanos // 1000 for t in stamps], np.int64)
        stored = {f: _flat(out[f], np.int64 if f == "recent_times" or self.item_kind != "string" else str)
                  for f in LIST_FEATURES}
        lists, stamp = self._merge(ev, pos, users, stored, stored_us)
        rows = {f: _split(*lists[f]) for f in LIST_FEATURES}
        return pd.DataFrame({key: users, **rows, TS: pd.to_datetime(stamp, unit="us", utc=True)})

    def _merge(self, ev: pd.DataFrame, pos: np.ndarray, users: np.ndarray, stored: Lists,
               stored_us: np.ndarray) -> tuple[Lists, np.ndarray]:
        """``merge_lists`` over integer codes: users by their position in ``users`` (sorted), items by their rank
        among every item of the batch and the stored lists (ranks keep the ids' order, which breaks ties)."""
        item_lists = [stored["recent_items"][0], stored["seen_items"][0]]
        vocab, codes = np.unique(np.concatenate([ev[ITEM].to_numpy(), *item_lists]), return_inverse=True)
        cuts = np.cumsum([len(ev), len(item_lists[0])])
        ev_i, recent, seen = np.split(codes.astype(np.int64), cuts)
        coded = {"recent_items": (recent, stored["recent_items"][1]), "recent_times": stored["recent_times"],
                 "seen_items": (seen, stored["seen_items"][1])}
        lists, stamp = merge_lists(np.arange(len(users)), coded, stored_us,
                                   np.searchsorted(users, ev[USER].to_numpy()), ev_i, _us(ev[TS]), pos,
                                   now_us=int(pd.Timestamp(self.clock()).value // 1000))
        for f in ("recent_items", "seen_items"):
            lists[f] = (vocab[lists[f][0]], lists[f][1])
        return lists, stamp


def merge_lists(users: np.ndarray, stored: Lists, stored_us: np.ndarray, ev_u: np.ndarray, ev_i: np.ndarray,
                ev_t: np.ndarray, pos: np.ndarray, now_us: int) -> tuple[Lists, np.ndarray]:
    """Each user's stored lists merged with a batch of events, vectorized over all users.

    ``users``: the batch's users, sorted; ``stored``: per feature the users' stored lists concatenated and their
    lengths; ``stored_us``: their rows' stamps (epoch µs, 0 = none); ``ev_*``: the events (user, item, time in
    epoch µs) and ``pos`` which of them are positives. Returns the merged lists in the same form and each row's
    new stamp: the newest of its events, ``now_us``, and 1 µs after the stored stamp (so it is never older)."""
    (recent, n_recent), (times, n_times), (seen, n_seen) = (stored[f] for f in LIST_FEATURES)
    if not np.array_equal(n_recent, n_times):
        raise FeedbackError("the history view online is inconsistent (recent_items and recent_times differ in "
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


def rebuild_history(store, decl) -> Path:
    """Recompute the history view's table (its push source's batch source) from the whole event log (prepared
    events plus feedback), so ``feast materialize`` (or a refresh) writes lists that include every logged
    event."""
    from feast_autofeat.datasets.base import write_parquet_atomic
    from feast_autofeat.features.snapshots import recent_items_table

    if decl.history is None:
        raise FeedbackError(f"{decl.name} declares no history view to rebuild.")
    src = decl.history.batch_source
    path = Path(src.path) if Path(src.path).is_absolute() else decl.repo_dir / src.path
    log = pa.Table.from_pandas(read_events(store, decl.interactions), preserve_index=False)
    table = recent_items_table(log, decl.interactions.positive)
    if decl.interactions.item_kind() == "int32":  # the history view holds integer ids as Int64 lists
        for name in ("recent_items", "seen_items"):
            table = table.set_column(table.schema.get_field_index(name), name,
                                     table.column(name).cast(pa.list_(pa.int64())))
    table = table.rename_columns([decl.interactions.user_key if c == USER else src.timestamp_field if c == TS
                                  else c for c in table.column_names])
    write_parquet_atomic(table, path)
    return path
