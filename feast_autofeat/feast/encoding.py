"""Feast's online value layout, built for whole batches at once.

Feast serializes every cell as its own protobuf (`ValueProto`) and every row's key as its own
`EntityKeyProto`; that per-cell work is what makes its materialization slow. For the shapes we write (one
Int64 join key, a fixed-length float vector, a constant string and timestamp per batch) every row has the
same byte layout, so we ask Feast's own serializers for the layout once, check it, and then fill whole numpy
blocks. The bytes are identical to Feast's (tests compare them), so unmodified Feast readers decode them.
"""

from __future__ import annotations

import struct
from datetime import datetime

import numpy as np
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import FloatList
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp

from feast_autofeat.errors import AutofeatError


def _layout_error(what: str) -> AutofeatError:
    return AutofeatError(f"Feast's {what} layout is not the one feast-autofeat was built for (feast 0.67); "
                         "install a supported feast version.")


class Int64KeyCodec:
    """Serialized entity keys (Feast's v3 format) for a single Int64 join key: a constant prefix, then the
    id as 8 little-endian bytes."""

    def __init__(self, join_key: str, version: int = 3):
        self.join_key, self.version = join_key, version
        probe = self._feast(0x0102030405060708)
        self.prefix = probe[:-8]
        if probe[-8:] != struct.pack("<q", 0x0102030405060708) or self._feast(-7) != self.prefix + struct.pack(
                "<q", -7):
            raise _layout_error("entity key")
        self.width = len(probe)

    def _feast(self, value: int) -> bytes:
        proto = EntityKeyProto(join_keys=[self.join_key], entity_values=[ValueProto(int64_val=value)])
        return serialize_entity_key(proto, entity_key_serialization_version=self.version)

    def fill(self, out: np.ndarray, ids: np.ndarray) -> None:
        """Write the keys of ``ids`` into ``out`` (n x ``width`` uint8)."""
        out[:, :len(self.prefix)] = np.frombuffer(self.prefix, np.uint8)
        out[:, len(self.prefix):] = np.ascontiguousarray(ids, dtype="<i8").view(np.uint8).reshape(-1, 8)

    def encode(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.width), np.uint8)
        self.fill(out, ids)
        return out


class FloatVectorCodec:
    """Serialized `ValueProto(float_list_val=...)` of a fixed length: a constant prefix, then packed float32."""

    def __init__(self, dim: int):
        self.dim = dim
        probe = ValueProto(float_list_val=FloatList(val=[0.0] * dim)).SerializeToString()
        self.prefix = probe[:len(probe) - 4 * dim]
        check = np.arange(dim, dtype=np.float32) * 0.5 - 3
        if ValueProto(float_list_val=FloatList(val=check.tolist())).SerializeToString() != self.prefix + \
                check.astype("<f4").tobytes():
            raise _layout_error("float list value")
        self.width = len(probe)

    def fill(self, out: np.ndarray, vectors: np.ndarray) -> None:
        out[:, :len(self.prefix)] = np.frombuffer(self.prefix, np.uint8)
        out[:, len(self.prefix):] = np.ascontiguousarray(vectors, dtype="<f4").view(np.uint8).reshape(
            len(vectors), 4 * self.dim)


def string_value(text: str) -> bytes:
    return ValueProto(string_val=text).SerializeToString()


def timestamp_value(ts: datetime) -> bytes:
    """Feast's `_ts:<view>` field: a protobuf Timestamp (UTC)."""
    proto = Timestamp()
    proto.FromDatetime(ts)
    return proto.SerializeToString()


def timestamp_nanos(raw: bytes) -> int:
    proto = Timestamp()
    proto.ParseFromString(raw)
    return proto.seconds * 1_000_000_000 + proto.nanos


def field_hash(view: str, feature: str) -> bytes:
    """The Redis hash field Feast uses for ``view:feature`` (murmur3, 4 bytes)."""
    return _mmh3(f"{view}:{feature}")
