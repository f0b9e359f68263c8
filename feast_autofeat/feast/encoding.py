"""Feast's online value layout, built for whole batches at once.

Feast serializes every cell as its own protobuf (`ValueProto`) and every row's key as its own
`EntityKeyProto`; that per-cell work is what makes its materialization slow. For the shapes we write (one
Int64, Int32 or String join key, a fixed-length float vector, a constant string and timestamp per batch) every
row of one key length has the same byte layout, so we ask Feast's own serializers for the layout once, check
it, and then fill whole numpy blocks. The bytes are identical to Feast's (tests compare them), so unmodified
Feast readers decode them.
"""

from __future__ import annotations

import struct
from datetime import datetime

import numpy as np
from feast.infra.key_encoding_utils import serialize_entity_key, serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import FloatList, Int64List, StringList
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from feast_autofeat.errors import AutofeatError


def _layout_error(what: str) -> AutofeatError:
    return AutofeatError(f"Feast's {what} layout is not the one feast-autofeat was built for (feast 0.67); "
                         "install a supported feast version.")


class KeyCodec:
    """Serialized entity keys (Feast's v3 format) for one join key of kind ``int64``, ``int32`` or ``string``: the
    join key's constant head, then the value's type, its length and its bytes (8 little-endian bytes for Int64, 4
    for Int32, UTF-8 for a string). Checked against Feast's own serializer for each kind at construction.

    ``groups(ids)`` returns the keys as uint8 matrices, one per key length (integer keys: one group), so writers
    fill whole blocks of rows at once."""

    _TYPES = {"int64": (ValueType.INT64, "<i8", "int64_val"), "int32": (ValueType.INT32, "<i4", "int32_val"),
              "string": (ValueType.STRING, None, "string_val")}

    def __init__(self, join_key: str, kind: str = "int64", version: int = 3):
        if kind not in self._TYPES:
            raise AutofeatError(f"join key {join_key}: key kind {kind!r} is not one of int64, int32, string.")
        self.join_key, self.kind, self.version = join_key, kind, version
        self.vtype, self.dtype, self.attr = self._TYPES[kind]
        self.head = serialize_entity_key_prefix([join_key], version)
        probes = ([0x01020304, -7] if kind != "string" else ["a", "\u00e9t\u00e9-42", ""])
        for value in probes:
            if self._feast(value) != self.head + self._value(value):
                raise _layout_error("entity key")
        self.width = len(self.head) + 8 + (8 if kind == "int64" else 4)  # of integer keys (strings vary)

    def _feast(self, value) -> bytes:
        proto = EntityKeyProto(join_keys=[self.join_key], entity_values=[ValueProto(**{self.attr: value})])
        return serialize_entity_key(proto, entity_key_serialization_version=self.version)

    def _value(self, value) -> bytes:
        data = value.encode("utf-8") if self.kind == "string" else np.array([value], self.dtype).tobytes()
        return struct.pack("<II", self.vtype.value, len(data)) + data

    def groups(self, ids: np.ndarray) -> list[tuple[np.ndarray | None, np.ndarray]]:
        """[(rows of ``ids`` in the group, or None for all; their keys as an n x width uint8 matrix)]."""
        head = np.frombuffer(self.head, np.uint8)
        if self.kind != "string":
            size = 8 if self.kind == "int64" else 4
            values = np.ascontiguousarray(ids, dtype=self.dtype).view(np.uint8).reshape(-1, size)
            return [(None, self._matrix(head, size, values))]
        encoded = np.char.encode(np.asarray(ids, dtype=str), "utf-8")
        lengths = np.char.str_len(encoded)
        raw = encoded.view(np.uint8).reshape(len(encoded), -1) if len(encoded) else np.zeros((0, 0), np.uint8)
        out = []
        for n in np.unique(lengths):
            rows = np.flatnonzero(lengths == n)
            out.append((rows, self._matrix(head, int(n), raw[rows, :n])))
        return out

    def _matrix(self, head: np.ndarray, size: int, values: np.ndarray) -> np.ndarray:
        tail = np.frombuffer(struct.pack("<II", self.vtype.value, size), np.uint8)
        out = np.empty((len(values), len(head) + 8 + size), np.uint8)
        out[:, :len(head)] = head
        out[:, len(head):len(head) + 8] = tail
        out[:, len(head) + 8:] = values
        return out

    def encode(self, ids: np.ndarray) -> list[bytes]:
        """Each id's serialized key, in order."""
        out: list = [b""] * len(ids)
        for rows, keys in self.groups(ids):
            positions = range(len(ids)) if rows is None else rows.tolist()
            for r, k in zip(positions, keys):
                out[r] = k.tobytes()
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


class StringListCodec:
    """Serialized ``ValueProto(string_list_val=...)`` cells (Feast's ``Array(String)``), the string-id twin of
    ``Int64ListCodec`` (same flat form: concatenated values and each cell's length; a missing cell is empty).
    Cells are parsed one by one: the lists are a batch of feedback users', not a table."""

    def encode(self, flat: np.ndarray, lengths: np.ndarray) -> list[bytes]:
        values, bounds = np.asarray(flat).tolist(), np.r_[0, np.cumsum(lengths)].tolist()
        return [ValueProto(string_list_val=StringList(val=values[a:b])).SerializeToString()
                for a, b in zip(bounds[:-1], bounds[1:])]

    def decode(self, cells: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        lists = [list(ValueProto.FromString(c).string_list_val.val) if c else [] for c in cells]
        flat = [v for cell in lists for v in cell]
        return (np.array(flat, dtype=str) if flat else np.zeros(0, "<U1")), np.array([len(c) for c in lists],
                                                                                      np.int64)


def list_codec(kind: str):
    """The list codec of item ids of ``kind`` (integer ids are stored as Int64 lists)."""
    return StringListCodec() if kind == "string" else Int64ListCodec()
