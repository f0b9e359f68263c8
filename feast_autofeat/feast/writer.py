"""Writing embedding vectors to Feast's online store, in the store's own layout.

``RedisVectorWriter`` is the fast path: each row becomes one ``HSET`` (vector, model version, Feast's
``_ts:<view>`` field) in Feast's Redis layout, built for a whole chunk of rows as one numpy block (no per-cell
protobuf objects), sent down one connection as a pipelined stream of RESP commands. ``RedisClusterVectorWriter``
(Feast's ``redis_type: redis_cluster``) builds the same block, computes every key's hash slot (CRC16, vectorized
over the block), and streams each node the rows whose slots it owns, all nodes at once. Other online stores
(SQLite, ...) get ``FeastStoreWriter``, which hands Feast's own ``online_write_batch`` its protobufs.

Both keep Feast's rule that an online value is never replaced by an older one: Feast checks the stored
timestamp of every row. Every row of one of our batches has the same timestamp, so the Redis writer keeps a
per-view watermark (the newest timestamp ever written, raised *before* the rows are written): a batch at or
after the watermark cannot be older than anything stored and skips the per-row check; an older batch falls back
to reading each row's stored timestamp. (Embedding views are written only by this engine: they have no push
source, so the watermark sees every write to them.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import numpy as np
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import FloatList
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.encoding import (
    FloatVectorCodec,
    KeyCodec,
    field_hash,
    string_value,
    timestamp_nanos,
    timestamp_value,
)

VECTOR_FEATURE = "embedding"
VERSION_FEATURE = "model_version"


class OnlineWriteError(AutofeatError):
    """The online store failed or went away during a write."""


class VectorWriter(Protocol):
    def write(self, ids: np.ndarray, vectors: np.ndarray, model_version: str, ts: datetime) -> int:
        """Write one batch; return the number of rows written (rows older than what is stored are skipped)."""

    def close(self) -> None: ...


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _crc16_table() -> np.ndarray:
    """CRC16-XMODEM (polynomial 0x1021), Redis Cluster's key hash, one entry per byte value."""
    table = np.zeros(256, np.uint32)
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table[i] = crc & 0xFFFF
    return table


_CRC16 = _crc16_table()
CLUSTER_SLOTS = 16384


def key_slots(keys: np.ndarray) -> np.ndarray:
    """Redis Cluster hash slots of equal-length binary keys, given as the rows of a uint8 matrix: CRC16 of the
    key mod 16384, one vectorized step per key byte. Keys holding a ``{`` byte may carry a hash tag; they (a
    few, for binary keys) take redis-py's rule one by one."""
    crc = np.zeros(len(keys), np.uint32)
    for j in range(keys.shape[1]):
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ keys[:, j]) & 0xFF]
    slots = (crc % CLUSTER_SLOTS).astype(np.int64)
    tagged = np.flatnonzero((keys == ord("{")).any(axis=1))
    if len(tagged):
        from redis.crc import key_slot

        slots[tagged] = [key_slot(keys[r].tobytes()) for r in tagged]
    return slots


def redis_client(repo_config):
    """A client of the single Redis server the store's config names, and its address for messages."""
    from feast.infra.online_stores.redis import RedisOnlineStore
    from redis import Redis

    nodes, params = RedisOnlineStore._parse_connection_string(repo_config.online_store.connection_string)
    client = Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params)
    if "socket_timeout" in params:  # a bounded wait (``bound_waits``) is not stretched by retries
        no_retries(client)
    return client, f"{nodes[0]['host']}:{nodes[0]['port']}"


def no_retries(client) -> None:
    """redis-py retries a failed call 3 times, with backoff, by default: a frozen Redis then holds a call for
    seconds past its socket timeout. A bounded wait takes no retries (the client of the service may retry)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client.set_retry(Retry(NoBackoff(), 0))


class RedisVectorWriter:
    """Pipelined HSETs in Feast's Redis layout (single Redis server; one Int64, Int32 or String join key)."""

    def __init__(self, repo_config, view: str, join_key: str, dim: int, chunk_rows: int = 4096,
                 key_kind: str = "int64"):
        cfg = repo_config.online_store
        self.client, self.address = self._connect(repo_config)
        self.view, self.dim, self.chunk_rows = view, dim, chunk_rows
        self.project = repo_config.project.encode()
        self.keys = KeyCodec(join_key, key_kind, repo_config.entity_key_serialization_version)
        self.values = FloatVectorCodec(dim)
        self.ttl_seconds = cfg.key_ttl_seconds
        self.skip_dedup = cfg.skip_dedup
        self.ts_field = f"_ts:{view}".encode()
        self.watermark_key = b"autofeat:watermark:" + self.project + b":" + view.encode()

    # ---- layout of one row's commands, with slots for the key and the vector
    def _template(self, model_version: str, ts: datetime, key_width: int) -> tuple[np.ndarray, list[int], int]:
        key_len = key_width + len(self.project)  # Feast's key: serialized entity key + project name
        key_slot = b"\0" * key_width
        vec_slot = b"\0" * self.values.width
        parts = [b"*8\r\n", _bulk(b"HSET"), b"$%d\r\n" % key_len, None, self.project + b"\r\n",
                 _bulk(field_hash(self.view, VECTOR_FEATURE)), b"$%d\r\n" % len(vec_slot), "vec", b"\r\n",
                 _bulk(field_hash(self.view, VERSION_FEATURE)), _bulk(string_value(model_version)),
                 _bulk(self.ts_field), _bulk(timestamp_value(ts))]
        if self.ttl_seconds:
            parts += [b"*3\r\n", _bulk(b"EXPIRE"), b"$%d\r\n" % key_len, None, self.project + b"\r\n",
                      _bulk(str(int(self.ttl_seconds)).encode())]
        row, key_offsets, vec_offset = bytearray(), [], -1
        for part in parts:
            if part is None:
                key_offsets.append(len(row))
                row += key_slot
            elif part == "vec":
                vec_offset = len(row)
                row += vec_slot
            else:
                row += part
        return np.frombuffer(bytes(row), np.uint8), key_offsets, vec_offset

    def _connect(self, repo_config):
        return redis_client(repo_config)

    def _block(self, template: np.ndarray, key_offsets: list[int], vec_offset: int, keys: np.ndarray,
               vectors: np.ndarray) -> np.ndarray:
        """One row of RESP commands per key (rows x template bytes); ``keys``: serialized keys of one length."""
        block = np.empty((len(keys), len(template)), np.uint8)
        block[:] = template
        for off in key_offsets:
            block[:, off:off + keys.shape[1]] = keys
        self.values.fill(block[:, vec_offset:vec_offset + self.values.width], vectors)
        return block

    def _blocks(self, model_version: str, ts: datetime, ids: np.ndarray, vectors: np.ndarray):
        """(block of RESP rows, its serialized keys) per chunk of at most ``chunk_rows`` rows of one key length."""
        for rows, keys in self.keys.groups(ids):
            vecs = vectors if rows is None else vectors[rows]
            template, key_offsets, vec_offset = self._template(model_version, ts, keys.shape[1])
            for start in range(0, len(keys), self.chunk_rows):
                part = keys[start:start + self.chunk_rows]
                yield self._block(template, key_offsets, vec_offset, part,
                                  vecs[start:start + self.chunk_rows]), part

    def write(self, ids: np.ndarray, vectors: np.ndarray, model_version: str, ts: datetime) -> int:
        ids = np.asarray(ids)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise AutofeatError(f"view {self.view}: expected {len(ids)} vectors of {self.dim} values, got "
                                f"shape {vectors.shape}.")
        if not len(ids):
            return 0
        try:
            if not self.skip_dedup:
                keep = self._newer_than_stored(ids, ts)
                ids, vectors = ids[keep], vectors[keep]
            self._send(ids, vectors, model_version, ts)
        except OSError as exc:  # includes ConnectionError, TimeoutError
            raise self._gone(exc) from exc
        except Exception as exc:
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.exceptions import TimeoutError as RedisTimeoutError

            if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
                raise self._gone(exc) from exc
            raise
        return len(ids)

    def _gone(self, exc: BaseException) -> OnlineWriteError:
        return OnlineWriteError(f"Redis at {self.address} failed while writing view {self.view} ({exc}). Rows "
                                "already written are complete vectors; rerun the same `feast materialize` command "
                                "once Redis is back (Feast has not recorded this interval as done).")

    def _newer_than_stored(self, ids: np.ndarray, ts: datetime) -> np.ndarray:
        """Rows to write: all of them when the batch is not older than the view's watermark; otherwise those
        whose stored timestamp is older (Feast's rule)."""
        new = timestamp_nanos(timestamp_value(ts))
        raw = self.client.get(self.watermark_key)
        mark = int(raw) if raw is not None else -1
        if new >= mark:
            if new > mark:
                self.client.set(self.watermark_key, str(new))
            return np.ones(len(ids), bool)
        keys = self.keys.encode(ids)
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key + self.project, self.ts_field)
            stored = pipe.execute()
        return np.array([s is None or timestamp_nanos(s) < new for s in stored], dtype=bool)

    def _send(self, ids: np.ndarray, vectors: np.ndarray, model_version: str, ts: datetime) -> None:
        replies_per_row = 2 if self.ttl_seconds else 1
        conn = self.client.connection_pool.get_connection()
        ok = False
        try:
            sock = conn._sock  # redis-py did the handshake (AUTH, SELECT, TLS); we stream raw RESP on it
            for block, _ in self._blocks(model_version, ts, ids, vectors):
                sock.sendall(block.reshape(-1))
                _read_replies(sock, len(block) * replies_per_row, self.view)
            ok = True
        finally:
            if not ok:
                conn.disconnect()
            self.client.connection_pool.release(conn)

    def close(self) -> None:
        self.client.close()


class RedisClusterVectorWriter(RedisVectorWriter):
    """The same rows in a Redis Cluster: keys routed by hash slot, one pipelined stream per node (every node's
    rows sent before any replies are read, so the nodes work in parallel). The slot map is read once per
    writer; a node answering MOVED/ASK (slots migrating mid-write) fails the batch with ``OnlineWriteError`` and
    the next writer reads a fresh map (rerun the materialization)."""

    def _connect(self, repo_config):
        from feast.infra.online_stores.redis import RedisOnlineStore
        from redis.cluster import ClusterNode, RedisCluster

        nodes, params = RedisOnlineStore._parse_connection_string(repo_config.online_store.connection_string)
        client = RedisCluster(startup_nodes=[ClusterNode(**n) for n in nodes], **params)
        return client, "Redis Cluster " + ",".join(f"{n['host']}:{n['port']}" for n in nodes)

    _owners: tuple[np.ndarray, list] | None = None  # the slot map, read once per writer (reset on failure)

    def _slot_owners(self) -> tuple[np.ndarray, list]:
        """(node position per slot, the nodes) from the client's slot map, read once per writer."""
        if self._owners is None:
            self._owners = self._read_slot_map()
        return self._owners

    def _read_slot_map(self) -> tuple[np.ndarray, list]:
        manager = self.client.nodes_manager
        nodes, position, owners = [], {}, np.empty(CLUSTER_SLOTS, np.int64)
        for slot in range(CLUSTER_SLOTS):
            node = manager.get_node_from_slot(slot)
            owners[slot] = position.setdefault(node.name, len(nodes))
            if owners[slot] == len(nodes):
                nodes.append(node)
        return owners, nodes

    def _send(self, ids: np.ndarray, vectors: np.ndarray, model_version: str, ts: datetime) -> None:
        replies_per_row = 2 if self.ttl_seconds else 1
        owners, nodes = self._slot_owners()
        project = np.frombuffer(self.project, np.uint8)
        pools = [self.client.get_redis_connection(n).connection_pool for n in nodes]
        conns: dict[int, object] = {}
        ok = False
        try:
            for block, part in self._blocks(model_version, ts, ids, vectors):
                keys = np.concatenate([part, np.broadcast_to(project, (len(part), len(project)))], axis=1)
                node_of = owners[key_slots(keys)]
                sent = []
                for n in np.unique(node_of):
                    rows = np.flatnonzero(node_of == n)
                    if n not in conns:
                        conns[n] = pools[n].get_connection()
                    conns[n]._sock.sendall(block[rows].reshape(-1))
                    sent.append((n, len(rows)))
                for n, count in sent:
                    _read_replies(conns[n]._sock, count * replies_per_row, self.view)
            ok = True
        finally:
            if not ok:
                self._owners = None  # a node failed or slots moved: the next batch reads the map again
            for n, conn in conns.items():
                if not ok:
                    conn.disconnect()
                pools[n].release(conn)


def _read_replies(sock, n: int, view: str) -> None:
    """Read ``n`` one-line replies (HSET/EXPIRE answer integers; errors are one line too)."""
    buf, lines = bytearray(), 0
    while lines < n:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("connection closed by the server")
        buf += data
        lines += data.count(b"\n")
    if buf[:1] == b"-" or b"\n-" in buf:
        start = 0 if buf[:1] == b"-" else buf.index(b"\n-") + 1
        message = bytes(buf[start:buf.index(b"\r\n", start)]).decode(errors="replace")
        raise OnlineWriteError(f"Redis refused a write to view {view}: {message}")


class FeastStoreWriter:
    """Any other online store: Feast's own ``online_write_batch`` with the protobufs it expects."""

    _VALUE = {"int64": "int64_val", "int32": "int32_val", "string": "string_val"}

    def __init__(self, repo_config, online_store, feature_view, join_key: str, dim: int, key_kind: str = "int64"):
        self.config, self.store, self.view = repo_config, online_store, feature_view
        self.join_key, self.dim, self.attr = join_key, dim, self._VALUE[key_kind]

    def write(self, ids: np.ndarray, vectors: np.ndarray, model_version: str, ts: datetime) -> int:
        version_value = ValueProto(string_val=model_version)
        rows = [
            (EntityKeyProto(join_keys=[self.join_key], entity_values=[ValueProto(**{self.attr: i})]),
             {VECTOR_FEATURE: ValueProto(float_list_val=FloatList(val=v)), VERSION_FEATURE: version_value},
             ts, None)
            for i, v in zip(np.asarray(ids).tolist(), np.asarray(vectors, np.float32).tolist())
        ]
        try:
            self.store.online_write_batch(self.config, self.view, rows, None)
        except Exception as exc:
            raise OnlineWriteError(f"online store {type(self.store).__name__} failed while writing view "
                                   f"{self.view.name} ({exc}); rerun `feast materialize` once it is back.") from exc
        return len(rows)

    def close(self) -> None:
        pass


def redis_kind(repo_config) -> str | None:
    """"redis" or "redis_cluster" where the store is Redis in Feast's layout (no online view versioning, which
    renames keys), else None (other stores, Sentinel)."""
    cfg = repo_config.online_store
    kind = getattr(getattr(cfg, "redis_type", None), "value", None)
    if (getattr(cfg, "type", None) != "redis" or kind not in ("redis", "redis_cluster")
            or getattr(repo_config.registry, "enable_online_feature_view_versioning", False)):
        return None
    return kind


def single_redis(repo_config) -> bool:
    """The store is one Redis server without online view versioning: the layout our fast paths write."""
    return redis_kind(repo_config) == "redis"


def vector_writer(repo_config, online_store, feature_view, join_key: str, dim: int,
                  key_kind: str = "int64") -> VectorWriter:
    """The fastest writer for the configured online store."""
    kind = redis_kind(repo_config)
    if kind == "redis":
        return RedisVectorWriter(repo_config, feature_view.name, join_key, dim, key_kind=key_kind)
    if kind == "redis_cluster":
        return RedisClusterVectorWriter(repo_config, feature_view.name, join_key, dim, key_kind=key_kind)
    return FeastStoreWriter(repo_config, online_store, feature_view, join_key, dim, key_kind)


def bound_waits(repo_config, seconds: float | None) -> None:
    """Give every connection to a Redis online store a socket timeout and a connect timeout of ``seconds`` (so a
    frozen or unreachable Redis fails a call instead of hanging it), unless the YAML's connection string sets its
    own (``host:port,socket_timeout=0.2``: Feast passes those to redis-py). Call it before the first read."""
    cfg = repo_config.online_store
    if seconds is None or getattr(cfg, "type", None) != "redis":
        return
    if seconds <= 0:
        raise AutofeatError(f"the online store timeout must be positive, got {seconds}.")
    given = {part.split("=", 1)[0].strip() for part in cfg.connection_string.split(",") if "=" in part}
    extra = [f"{k}={seconds:g}" for k in ("socket_timeout", "socket_connect_timeout") if k not in given]
    if extra:
        cfg.connection_string = ",".join([cfg.connection_string, *extra])


def bound_store_waits(store, seconds: float | None) -> None:
    """``bound_waits`` for a ``FeatureStore`` about to serve: also Feast's own Redis client, created here with the
    bounds and without redis-py's retries."""
    bound_waits(store.config, seconds)
    if seconds is None or redis_kind(store.config) is None:
        return
    no_retries(store._get_provider().online_store._get_client(store.config.online_store))
