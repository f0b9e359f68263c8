"""One user's serving features from the online store, as ``get_online_features(...).to_dict()`` returns them.

``FeastRead`` is that call. ``RedisRead`` gets the same dict from Feast's Redis online store in one HMGET: every
view the recommender reads is keyed by the user alone, so Feast keeps all of them in one hash per user. It
builds the key, the field names, the parsing and the Python values with Feast's own Redis store code
(``_generate_redis_keys_for_entities``, ``_generate_hset_keys_for_features``, ``_read_hash_fields``,
``_get_features_for_entity``, ``feast_value_type_to_python_type``), with the views, fields and value types
resolved once instead of on every call. What it skips is ``get_online_features``' per-call work around the read:
resolving the feature refs in the registry, preparing entity rows, and building and converting a response
protobuf. Feast's read plus ``to_dict`` was about half of a ``recommend`` call on ML-100K (a cProfile of 500
calls: 52%).

Both read a batch of entities at once (``many``: one ``get_online_features`` call, or one pipeline of HMGETs),
which is how the service answers concurrent requests together (``recommend.service``).

``online_reader(store, refs)`` picks ``RedisRead`` for a Redis online store (standalone, cluster or sentinel)
whose views share one join key, and ``FeastRead`` otherwise (e.g. SQLite). A parity test checks that both return
the same dict, for known users, unknown users and users with missing view rows.
"""

from __future__ import annotations

from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
from feast.online_response import TIMESTAMP_POSTFIX
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType


class FeastRead:
    """``store.get_online_features(features=refs, entity_rows=[{key: id}], full_feature_names=True).to_dict(...)``
    for one entity, first values only: {``view__feature``: value, ``view__feature__ts``: seconds}."""

    kind = "feast"

    def __init__(self, store, refs: list[str], join_key: str = "user_id", timestamps: bool = False):
        self.store, self.refs, self.join_key, self.timestamps = store, list(refs), join_key, timestamps

    def __call__(self, entity_id: int) -> dict:
        return self.many([entity_id])[0]

    def many(self, entity_ids: list) -> list[dict]:
        """One dict per entity, in one ``get_online_features`` call."""
        out = self.store.get_online_features(features=self.refs, entity_rows=[{self.join_key: e} for e in entity_ids],
                                             full_feature_names=True).to_dict(include_event_timestamps=self.timestamps)
        return [{k: v[i] for k, v in out.items()} for i in range(len(entity_ids))]


class RedisRead:
    """The same dict as ``FeastRead``, read from Feast's Redis layout in one HMGET (see the module)."""

    kind = "redis"

    def __init__(self, store, refs: list[str], join_key: str = "user_id", timestamps: bool = False):
        self.join_key, self.timestamps = join_key, timestamps
        self.config = store.config
        self.online = store._get_provider().online_store
        by_view: dict[str, list[str]] = {}
        for ref in refs:
            view, feature = ref.split(":", 1)
            by_view.setdefault(view, []).append(feature)
        self.fields: list = []  # every view's feature fields and its timestamp field, in one HMGET
        self.views = []  # (fv name in the store, its features, where its fields start, [(out name, type)])
        key_type = None
        for view, features in by_view.items():
            fv = store.get_feature_view(view)
            if [e.name for e in fv.entity_columns] != [join_key]:
                raise ValueError(f"{view} is not keyed by {join_key} alone")
            key_type = key_type or fv.entity_columns[0].dtype.to_value_type()
            types = {f.name: f.dtype.to_value_type() for f in fv.features}
            types = {k: (v, _plain(v)) for k, v in types.items()}
            fv_name = _versioned_fv_name(fv, self.config)
            names, hset = self.online._generate_hset_keys_for_features(fv, list(features), fv_name_override=fv_name)
            self.views.append((fv_name, names, len(self.fields),
                               [(f"{fv.projection.name_to_use()}__{f}", types[f]) for f in features]))
            self.fields.extend(hset)
        self.key_type = key_type

    def key(self, entity_id: int) -> bytes:
        if self.key_type == ValueType.INT64:  # what Feast's converter makes of an int, without its type checks
            value = ValueProto(int64_val=int(entity_id))
        else:
            value = python_values_to_proto_values([entity_id], self.key_type)[0]
        ek = EntityKeyProto(join_keys=[self.join_key], entity_values=[value])
        return self.online._generate_redis_keys_for_entities(self.config, [ek])[0]

    def __call__(self, entity_id: int) -> dict:
        return self.many([entity_id])[0]

    def many(self, entity_ids: list) -> list[dict]:
        """One dict per entity, from one pipeline of HMGETs (one round trip for a batch of requests)."""
        replies = self.online._read_hash_fields(self.config, [(self.key(e), self.fields) for e in entity_ids])
        return [self._row(e, values) for e, values in zip(entity_ids, replies)]

    def _row(self, entity_id, values: list) -> dict:
        out = {self.join_key: entity_id}  # to_dict leads with the entity key (and a zero timestamp for it)
        if self.timestamps:
            out[self.join_key + TIMESTAMP_POSTFIX] = 0
        for fv_name, names, start, outputs in self.views:
            ts, row = self.online._get_features_for_entity(values[start:start + len(names)], fv_name, list(names))
            for (name, (vtype, plain)), feature in zip(outputs, names):
                proto = row[feature] if row is not None else None
                attr = proto.WhichOneof("val") if plain and proto is not None else ""
                if proto is None or attr is None:
                    out[name] = None
                elif attr in _SCALARS:  # what Feast's converter returns for these, without its special cases
                    out[name] = getattr(proto, attr)
                elif attr in _LISTS:
                    out[name] = list(getattr(proto, attr).val)
                else:
                    out[name] = feast_value_type_to_python_type(proto, vtype)
                if self.timestamps:
                    out[name + TIMESTAMP_POSTFIX] = int(ts.timestamp()) if ts is not None else 0
        return out


_KINDS = ("int32", "int64", "float", "double", "string", "bool", "bytes")
_SCALARS = frozenset(f"{k}_val" for k in _KINDS)
_LISTS = frozenset(f"{k}_list_val" for k in _KINDS)


def _plain(vtype) -> bool:
    """Whether Feast's converter returns a value of this type as the proto holds it (numbers, strings, bools,
    bytes and their lists); timestamps, UUIDs, maps, JSON, ... always go through the converter."""
    kinds = [k.upper() for k in _KINDS]
    return vtype in {ValueType[k] for k in kinds} | {ValueType[f"{k}_LIST"] for k in kinds}


def online_reader(store, refs: list[str], join_key: str = "user_id", timestamps: bool = False,
                  kind: str = "auto") -> FeastRead | RedisRead:
    """``kind``: ``auto`` (``RedisRead`` where it applies, else ``FeastRead``), ``redis`` or ``feast``."""
    if kind not in ("auto", "redis", "feast"):
        raise ValueError(f"online read must be auto, redis or feast, got {kind!r}.")
    if kind != "feast" and isinstance(store._get_provider().online_store, RedisOnlineStore):
        try:
            return RedisRead(store, refs, join_key, timestamps)
        except ValueError:
            if kind == "redis":
                raise
    elif kind == "redis":
        raise ValueError(f"online read 'redis' needs a Redis online store, not {store.config.online_store.type}.")
    return FeastRead(store, refs, join_key, timestamps)
