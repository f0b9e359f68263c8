"""Ids of every key kind: arrays, request parsing, lookups across kinds, hashing, storage in safetensors."""

import numpy as np
import pytest

from feast_autofeat.ids import IdError, id_array, pack_ids, parse_id, positions, stable_hash, unpack_ids
from feast_autofeat.splits import holdout_users


def test_id_arrays_keep_their_kind_and_refuse_the_wrong_one():
    assert id_array([3, 1]).dtype == np.int64 and id_array(np.array(["u1", "u2"])).dtype.kind == "U"
    assert id_array(np.array(["u1", "b"], dtype=object), "string").tolist() == ["u1", "b"]
    for values, kind, match in (([1, "a"], "int64", "must be integers"), ([1.5], "int64", "must be integers"),
                                ([2**31], "int32", "does not fit the Int32 key"), ([1, 2], "string", "must be strings"),
                                (np.array([2**64 - 1], np.uint64), "int64", "does not fit a 64-bit"),
                                (np.array([True]), None, "not booleans")):
        with pytest.raises(IdError, match=match):
            id_array(values, kind)


def test_request_ids_are_parsed_by_kind_without_echoing_long_input():
    assert parse_id("42", "int64") == 42 and parse_id(-7, "int32") == -7 and parse_id("A2S", "string") == "A2S"
    for value, kind, text, match in (("42", "int64", False, "must be an integer, got str '42'"),
                                     (42, "string", True, "must be a string, got int"),
                                     (2**63, "int64", True, "out of range for a 64-bit"),
                                     (2**31, "int32", True, "out of range for a 32-bit"),
                                     (True, "int64", True, "must be an integer, got bool"),
                                     ("x" * 500, "int64", True, "x" * 40 + r"\.\.\.'")):
        with pytest.raises(IdError, match=match) as err:
            parse_id(value, kind, "user_id", text)
        assert len(str(err.value)) < 120


def test_positions_across_kinds_and_storage_round_trip():
    ints, strs = np.array([1, 5, 9]), np.array(["a", "b", "é"])
    assert positions(ints, [9, 2, 1]).tolist() == [2, -1, 0]
    assert positions(ints, ["9"]).tolist() == [-1] and positions(strs, [5]).tolist() == [-1]  # other kinds: absent
    assert positions(strs, np.array(["é", "z"], dtype=object)).tolist() == [2, -1]
    assert positions(np.zeros(0, np.int64), [1]).tolist() == [-1]
    for ids in (ints, strs, np.zeros(0, np.int64)):
        back = unpack_ids(pack_ids("ids", ids), "ids")
        assert back.tolist() == ids.tolist() and back.dtype.kind == ids.dtype.kind


def test_holdouts_are_stable_per_id_and_integer_ids_keep_their_old_hash():
    users = np.arange(1, 2001)
    mask = holdout_users(users, 0.1, seed=0)
    assert 0.07 < mask.mean() < 0.13
    np.testing.assert_array_equal(mask[:50], holdout_users(users[:50], 0.1, seed=0))  # per id, not per batch
    # the multiplicative hash integer ids always had (so splits of earlier results stay the same)
    mixed = users.astype(np.uint64) ^ np.uint64(0)
    old = ((mixed * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) % np.uint64(10_000) < 1000
    np.testing.assert_array_equal(mask, old)
    names = np.array([f"u{i}" for i in users])
    assert 0.07 < holdout_users(names, 0.1, seed=0).mean() < 0.13
    assert (stable_hash(names, 1) != stable_hash(names, 2)).mean() > 0.99


def test_request_text_ids_are_bounded_before_conversion():
    """Query-parameter ids: ASCII digits only, and nothing past 64 bits reaches int() (whose 4,300-digit cap would
    otherwise raise a ValueError that is not the request's fault); leading zeros are still the number."""
    assert parse_id("0" * 20_000, "int64", "x") == 0
    assert parse_id("0" * 30 + "42", "int64", "x") == 42 and parse_id(" -5 ", "int64", "x") == -5
    for text in ("9" * 20_000, "9223372036854775808", "1" * 20):
        with pytest.raises(IdError, match="x .* is out of range for a 64-bit integer key") as err:
            parse_id(text, "int64", "x")
        assert len(str(err.value)) < 120  # never the whole input back
    for text in ("²", "+-3", "٣", "1e3", ""):
        with pytest.raises(IdError, match="x must be an integer"):
            parse_id(text, "int64", "x")
    with pytest.raises(IdError, match="a 70000-bit number"):
        parse_id(1 << 69_999, "int64", "x")
