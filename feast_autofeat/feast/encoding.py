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
from feast.protos.feast.types.Value_pb2 import FloatList, Int64List
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


class Int64ListCodec:
    """Serialized ``ValueProto(int64_list_val=...)`` cells (Feast's ``Array(Int64)``) to and from flat arrays.

    Decoding parses all cells as one message (protobuf concatenates repeated fields of concatenated messages),
    so values cost no Python work; a cell's length is the count of its varint-ending bytes (< 0x80) less the
    header's four (the Value and Int64List tags and lengths; two for an empty list). The totals are checked."""

    def __init__(self):
        self.empty = ValueProto(int64_list_val=Int64List(val=[])).SerializeToString()
        probe = ValueProto(int64_list_val=Int64List(val=[1, 300, -1])).SerializeToString()
        if self.empty != b"r\x00" or probe[:1] + probe[2:3] != b"r\n" or self.decode([probe, None, self.empty])[
                1].tolist() != [3, 0, 0]:
            raise _layout_error("integer list value")

    def encode(self, flat: np.ndarray, lengths: np.ndarray) -> list[bytes]:
        """One cell per list; list ``j`` is the next ``lengths[j]`` values of ``flat``."""
        values, bounds = flat.tolist(), np.r_[0, np.cumsum(lengths)].tolist()
        return [ValueProto(int64_list_val=Int64List(val=values[a:b])).SerializeToString()
                for a, b in zip(bounds[:-1], bounds[1:])]

    def decode(self, cells: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """The concatenated values and each cell's length (a missing cell is an empty list)."""
        cells = [c or self.empty for c in cells]
        joined = b"".join(cells)
        values = np.array(ValueProto.FromString(joined).int64_list_val.val, np.int64)
        ends = np.r_[0, np.cumsum(np.frombuffer(joined, np.uint8) < 0x80)]
        bounds = np.r_[0, np.cumsum([len(c) for c in cells])]
        header = np.where(np.array([c == self.empty for c in cells], bool), 2, 4)
        lengths = ends[bounds[1:]] - ends[bounds[:-1]] - header
        if lengths.sum() != len(values) or (lengths < 0).any():
            raise _layout_error("integer list value")
        return values, lengths
