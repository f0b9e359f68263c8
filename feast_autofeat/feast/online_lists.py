"""Read-merge-write of a view's integer-list features in Feast's Redis layout, safe across processes.

The feedback path keeps per-user lists online (recent items, their times, seen items) and updates them by
merging new events into what is stored. Through Feast that is ``get_online_features`` (a protobuf object per
cell, then ``to_dict``) plus ``write_to_online_store`` (a protobuf per cell again, a read of every row's
timestamp, then the write): about 150 ms for 500 users on this 2-core machine, and two writers merging the
same user at once could each overwrite the other's update.

``RedisListRows.update`` does the same in Feast's own layout (the bytes Feast writes and reads: entity key +
project, ``mmh3(view:feature)`` fields holding serialized ``ValueProto(int64_list_val=...)``, a ``_ts:<view>``
timestamp, the store's key TTL) as one optimistic transaction: ``WATCH`` the users' keys, read every stored
row with one server-side script, merge in Python (vectorized by the caller), ``MULTI``/``EXEC`` the writes.
If anything touched one of those keys meanwhile (another feedback writer, ``feast materialize`` writing another
view of the same entity), ``EXEC`` aborts without writing and the update is redone on fresh data. Unmodified
Feast readers see the result; Feast's rule that an online row is never replaced by an older one holds because
the caller stamps each row after the stored one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from feast_autofeat.feast.encoding import Int64ListCodec, KeyCodec, field_hash
from feast_autofeat.feast.writer import OnlineWriteError, redis_client

# HMGET of the same fields from every key, one round trip (reads must happen between WATCH and MULTI)
_READ_ALL = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HMGET', key, unpack(ARGV)) end
return out
"""

# per feature: every row's list concatenated, and each row's length
Stored = dict[str, tuple[np.ndarray, np.ndarray]]
Merge = Callable[[Stored, np.ndarray], tuple[Stored, np.ndarray]]


class RedisListRows:
    """Optimistic read-merge-write of list ``features`` of ``view`` for a batch of entities; ``codecs``: each
    feature's list codec (default ``Int64ListCodec``, ``encoding.list_codec`` for string ids); ``key_kind``: the
    join key's kind."""

    def __init__(self, repo_config, view: str, join_key: str, features: Sequence[str], max_attempts: int = 50,
                 key_kind: str = "int64", codecs: dict | None = None):
        self.client, self.address = redis_client(repo_config)
        self.view, self.features, self.max_attempts = view, list(features), max_attempts
        self.project = repo_config.project.encode()
        self.keys = KeyCodec(join_key, key_kind, repo_config.entity_key_serialization_version)
        self.ttl_seconds = repo_config.online_store.key_ttl_seconds
        self.ts_field = f"_ts:{view}".encode()
        self.fields = [self.ts_field] + [field_hash(view, f) for f in self.features]
        self.codecs = {f: (codecs or {}).get(f) or Int64ListCodec() for f in self.features}
        self.attempts = 0  # transactions tried by the last update (1 when nobody interfered)

    def _key_bytes(self, ids: np.ndarray) -> list[bytes]:
        return [k + self.project for k in self.keys.encode(ids)]

    def read(self, ids: np.ndarray, client=None) -> tuple[Stored, np.ndarray]:
        """The stored lists of ``ids`` (per feature: concatenated values, each row's length; a missing row or
        cell is empty) and the rows' timestamps (epoch µs; 0 where there is no row)."""
        keys = self._key_bytes(ids)
        raw = (client or self.client).execute_command("EVAL", _READ_ALL, len(keys), *keys, *self.fields)
        stamps = np.zeros(len(ids), np.int64)
        ts = Timestamp()
        for row, values in enumerate(raw):
            if values[0] is not None:  # else no row of this view for the entity (the hash may hold other views)
                ts.ParseFromString(values[0])
                stamps[row] = ts.seconds * 1_000_000 + ts.nanos // 1000
        stored = {f: self.codecs[f].decode([values[j + 1] if values[0] is not None else None for values in raw])
                  for j, f in enumerate(self.features)}
        return stored, stamps

    def update(self, ids: np.ndarray, merge: Merge) -> int:
        """Read the rows of ``ids`` (unique), ``merge(stored, stamps) -> (lists per feature, new stamps µs)``,
        write them; redone on fresh data when another client changed one of the keys meanwhile."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError, WatchError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        ids = np.asarray(ids)
        keys = self._key_bytes(ids)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                for attempt in range(1, self.max_attempts + 1):
                    self.attempts = attempt
                    try:
                        pipe.watch(*keys)
                        lists, stamps = merge(*self.read(ids, client=pipe))
                        pipe.multi()
                        self._queue(pipe, keys, lists, np.asarray(stamps, np.int64))
                        pipe.execute()
                        return len(ids)
                    except WatchError:
                        continue
        except (OSError, RedisConnectionError, RedisTimeoutError) as exc:
            raise OnlineWriteError(f"Redis at {self.address} failed while updating view {self.view} ({exc}); "
                                   "nothing of this update was written.") from exc
        except RedisError as exc:  # e.g. out of memory: EXEC refuses the whole transaction
            reason = str(exc).rpartition("caused error: ")[2]  # not redis-py's echo of the (binary) command
            raise OnlineWriteError(f"Redis at {self.address} refused an update of view {self.view} ({reason}); "
                                   "nothing of this update was written.") from exc
        raise OnlineWriteError(f"view {self.view}: {len(ids)} rows were changed by other writers during each of "
                               f"{self.max_attempts} attempts; nothing was written, retry the update.")

    def _queue(self, pipe, keys: list[bytes], lists: Stored, stamps: np.ndarray) -> None:
        columns = [self.codecs[f].encode(*lists[f]) for f in self.features]
        for row, key in enumerate(keys):
            us = int(stamps[row])
            mapping = {self.ts_field: Timestamp(seconds=us // 1_000_000, nanos=us % 1_000_000 * 1000)
                       .SerializeToString()}
            mapping.update(zip(self.fields[1:], (column[row] for column in columns)))
            pipe.hset(key, mapping=mapping)
            if self.ttl_seconds:
                pipe.expire(key, self.ttl_seconds)
