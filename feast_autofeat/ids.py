"""Entity ids as Feast allows them: Int64, Int32 or String join keys.

Everything that holds ids (model vocabularies, item indexes, feedback, serving) keeps them in one of two numpy
forms, chosen by the entity's key kind: ``int64`` arrays for the integer kinds (Int32 values are range-checked)
and fixed-width unicode (``<U``) arrays for strings. Both sort, binary-search (``np.searchsorted``), ``np.isin``
and ``np.unique`` the same way, so the code that ranks items or finds a user's row is the same for both; the
user always gets their own ids back.

Model artifacts are tensors (safetensors cannot hold strings): ``pack_ids`` stores string ids as their UTF-8
bytes plus offsets, ``unpack_ids`` reads either form back.
"""

from __future__ import annotations

import numpy as np
import torch

from feast_autofeat.errors import AutofeatError

KINDS = ("int64", "int32", "string")
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class IdError(AutofeatError):
    """An id does not fit its entity's key type (a string for an integer key, an integer out of range)."""


def kind_of_value_type(value_type) -> str:
    """The key kind of a Feast ``ValueType`` (or its name): ``int64``, ``int32`` or ``string``."""
    name = getattr(value_type, "name", str(value_type)).upper()
    kinds = {"INT64": "int64", "INT32": "int32", "STRING": "string"}
    if name not in kinds:
        raise IdError(f"join keys of type {name} are not supported: use Int64, Int32 or String.")
    return kinds[name]


def kind_of_array(values) -> str:
    """The kind an array of ids already has (integers -> int64, anything else -> string)."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return "int64"
    if arr.dtype.kind == "b":
        raise IdError("ids must be integers or strings, not booleans.")
    return "string"


def id_array(values, kind: str | None = None, what: str = "id") -> np.ndarray:
    """``values`` as an id array of ``kind`` (default: the kind they have): int64 for integer kinds, ``<U`` for
    strings. Integers out of range, numbers for a string key (or the reverse), booleans and missing values are
    an ``IdError`` naming ``what``."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "i" and kind in (None, "int64"):
        return values.astype(np.int64, copy=False)
    arr = np.asarray(values)
    kind = kind or (kind_of_array(arr) if arr.size else "int64")
    if kind not in KINDS:
        raise IdError(f"unknown id kind {kind!r}; use one of {', '.join(KINDS)}.")
    if arr.size == 0:
        return np.zeros(0, "<U1" if kind == "string" else np.int64)
    if kind == "string":
        if arr.dtype.kind == "O":
            bad = [v for v in arr.ravel() if not isinstance(v, str)]
            if bad:
                raise IdError(f"{what} must be strings, got {type(bad[0]).__name__} {_short(repr(bad[0]))}.")
            return arr.astype(str)
        if arr.dtype.kind != "U":
            raise IdError(f"{what} must be strings, got {arr.dtype} values like {arr.ravel()[:3].tolist()}.")
        return arr
    if arr.dtype.kind == "O":
        bad = [v for v in arr.ravel() if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))]
        if bad:
            raise IdError(f"{what} must be integers, got {type(bad[0]).__name__} {_short(repr(bad[0]))}.")
        big = [v for v in arr.ravel() if not INT64[0] <= int(v) <= INT64[1]]
        if big:
            raise IdError(f"{what} {_short(str(big[0]))} does not fit a 64-bit integer key.")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "u" and arr.max() > INT64[1]:
        raise IdError(f"{what} {_short(str(arr.max()))} does not fit a 64-bit integer key.")
    elif arr.dtype.kind not in "iu":
        raise IdError(f"{what} must be integers, got {arr.dtype} values like {arr.ravel()[:3].tolist()}.")
    arr = arr.astype(np.int64, copy=False)
    if kind == "int32" and (arr.min() < INT32[0] or arr.max() > INT32[1]):
        raise IdError(f"{what} {int(arr[(arr < INT32[0]) | (arr > INT32[1])][0])} does not fit the Int32 key.")
    return arr


def parse_id(value, kind: str, what: str = "id", text: bool = True):
    """One id from a request (a Python int or str, or text such as a query parameter when ``text``) as its key
    kind's Python value; anything else is an ``IdError`` naming ``what`` (never echoing a long input)."""
    if kind == "string":
        if not isinstance(value, str):
            raise IdError(f"{what} must be a string, got {type(value).__name__}.")
        return value
    if isinstance(value, str) and not text:
        raise IdError(f"{what} must be an integer, got str {_short(value)!r}.")
    bits = "32" if kind == "int32" else "64"
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not (digits.isascii() and digits.isdigit()):  # ASCII digits only: int() takes others ("²" fails)
            raise IdError(f"{what} must be an integer, got {_short(value)!r}.")
        if len(digits.lstrip("0")) > 19:  # past any 64-bit integer, and never handed to int() (4,300-digit cap)
            raise IdError(f"{what} {_short(text)} is out of range for a {bits}-bit integer key.")
        value = int(text[:len(text) - len(digits)] + (digits.lstrip("0") or "0"))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise IdError(f"{what} must be an integer, got {type(value).__name__}.")
    lo, hi = INT32 if kind == "int32" else INT64
    if not lo <= int(value) <= hi:
        shown = _short(str(value)) if int(value).bit_length() < 1000 else f"(a {int(value).bit_length()}-bit number)"
        raise IdError(f"{what} {shown} is out of range for a {bits}-bit integer key.")
    return int(value)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def positions(sorted_ids: np.ndarray, values) -> np.ndarray:
    """Positions of ``values`` in ``sorted_ids`` (sorted, unique), -1 where absent. Values of another kind (a
    string looked up among integer ids) are absent, never an error."""
    if not len(sorted_ids):
        return np.full(len(values), -1, np.int64)
    values = np.asarray(values)
    if not len(values):
        return np.zeros(0, np.int64)
    integer = sorted_ids.dtype.kind in "iu"
    if values.dtype.kind not in ("iu" if integer else "U"):
        try:
            values = id_array(values, "int64" if integer else "string")
        except IdError:
            return np.full(len(values), -1, np.int64)
    pos = np.searchsorted(sorted_ids, values).clip(0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == values, pos, -1)


def stable_hash(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A seeded 64-bit hash of each id, the same in every process and run (for user hold-outs). Integers keep the
    multiplicative hash the project always used; strings hash their UTF-8 bytes (pandas' fixed-key SipHash)."""
    import pandas as pd

    arr = np.asarray(ids)
    salt = np.uint64((seed * 0xD6E8FEB86659FD93) % 2**64)
    if arr.dtype.kind in "iu":
        mixed = arr.astype(np.int64).astype(np.uint64) ^ salt
    else:
        mixed = pd.util.hash_array(arr.astype(object)).astype(np.uint64) ^ salt
    return (mixed * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)  # Fibonacci hashing: the high bits mix best


def pack_ids(name: str, ids: np.ndarray) -> dict[str, torch.Tensor]:
    """Tensors for a model artifact: ``name`` (int64) for integer ids; ``name.utf8`` and ``name.offsets`` for
    strings."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return {name: torch.from_numpy(ids.astype(np.int64))}
    encoded = [str(s).encode("utf-8") for s in ids.tolist()]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in encoded])
    blob = np.frombuffer(b"".join(encoded), np.uint8).copy() if encoded else np.zeros(0, np.uint8)
    return {f"{name}.utf8": torch.from_numpy(blob), f"{name}.offsets": torch.from_numpy(offsets)}


def unpack_ids(tensors: dict, name: str) -> np.ndarray:
    """The ids ``pack_ids`` stored under ``name``."""
    if name in tensors:
        return tensors[name].numpy().astype(np.int64)
    blob = tensors[f"{name}.utf8"].numpy().tobytes()
    bounds = tensors[f"{name}.offsets"].numpy().tolist()
    strings = [blob[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]
    return np.array(strings, dtype=str) if strings else np.zeros(0, "<U1")


def to_python(ids: np.ndarray) -> list:
    """Ids as plain Python ints or strs (for JSON, Feast entity rows)."""
    return np.asarray(ids).tolist()
