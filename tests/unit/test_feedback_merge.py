"""The feedback merge (vectorized over users) against a plain per-user reference, and the integer-list cell
codec against protobuf's own serializer."""

from __future__ import annotations

import numpy as np
import pytest
from feast.protos.feast.types.Value_pb2 import Int64List
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.encoding import Int64ListCodec
from feast_autofeat.features.snapshots import RECENT_ITEMS, SEEN_ITEMS
from feast_autofeat.recommend.feedback import FeedbackError, merge_lists


def _reference(stored: dict, stored_us: int, events: list[tuple[int, int, bool]], now_us: int):
    """One user, the obvious way: lists of (item, time), sorted and deduplicated in Python."""
    recent = list(zip(stored["recent_items"], stored["recent_times"])) + [(i, t) for i, t, p in events if p]
    recent.sort(key=lambda x: (-x[1], -x[0]))
    out, taken = [], set()
    for i, t in recent:
        if i not in taken:
            taken.add(i)
            out.append((i, t))
    out = out[:RECENT_ITEMS]
    seen, taken = [], set()
    for i in [i for i, _, _ in sorted(events, key=lambda e: (-e[1], -e[0]))] + list(stored["seen_items"]):
        if i not in taken:
            taken.add(i)
            seen.append(i)
    stamp = max(max(t for _, t, _ in events), stored_us + 1, now_us)
    return [i for i, _ in out], [t for _, t in out], seen[:SEEN_ITEMS], stamp


def _case(rng, n_users: int, item_hi: int, dense_history: bool):
    users = np.sort(rng.choice(np.arange(1, 10 * n_users), n_users, replace=False))
    stored, stored_us = {"recent_items": [], "recent_times": [], "seen_items": []}, []
    for _ in users:
        n_seen = int(rng.integers(SEEN_ITEMS - 5, SEEN_ITEMS + 1)) if dense_history else int(rng.integers(0, 30))
        seen = rng.choice(item_hi, n_seen, replace=False)
        recent = seen[: min(len(seen), RECENT_ITEMS if dense_history else int(rng.integers(0, len(seen) + 1)))]
        times = np.sort(rng.integers(10, 20, len(recent)) * 100_000)[::-1]  # stored: newest first; ties
        stored["recent_items"].append(recent)
        stored["recent_times"].append(times)
        stored["seen_items"].append(seen)
        stored_us.append(int(rng.integers(0, 2_000_000)) if len(seen) or rng.random() < 0.5 else 0)
    n = int(rng.integers(n_users, 4 * n_users))
    ev_u = rng.choice(users, n)
    ev_u[: len(users)] = users  # every user of the batch has an event
    pool = np.concatenate([np.concatenate(stored["seen_items"]), rng.integers(0, item_hi, 50)])
    ev_i = rng.choice(pool, n)  # many repeat a stored item, some repeat within the batch
    ev_t = rng.integers(5, 30, n) * 100_000  # ties; some older than what is stored (late events)
    pos = rng.random(n) < 0.6
    return users, stored, np.array(stored_us, np.int64), ev_u, ev_i, ev_t, pos


def _flat(lists):
    return (np.concatenate([np.asarray(x, np.int64) for x in lists]),
            np.array([len(x) for x in lists], np.int64))


@pytest.mark.parametrize("seed,item_hi,dense", [(0, 2000, False), (1, 2000, True), (2, 2**62, False),
                                                (3, 50, False)])
def test_merge_matches_a_per_user_reference(seed, item_hi, dense):
    """Duplicates within the batch and against stored lists, late events, list caps, ids too large to combine."""
    rng = np.random.default_rng(seed)
    users, stored, stored_us, ev_u, ev_i, ev_t, pos = _case(rng, 40, item_hi, dense)
    now = 2_500_000
    got, stamps = merge_lists(users, {f: _flat(v) for f, v in stored.items()}, stored_us, ev_u, ev_i, ev_t, pos, now)
    bounds = {f: np.r_[0, np.cumsum(got[f][1])] for f in got}
    for j, user in enumerate(users):
        mine = {f: stored[f][j] for f in stored}
        events = [(int(i), int(t), bool(p)) for u, i, t, p in zip(ev_u, ev_i, ev_t, pos) if u == user]
        want = _reference(mine, int(stored_us[j]), events, now)
        for f, w in zip(("recent_items", "recent_times", "seen_items"), want[:3]):
            values, b = got[f][0], bounds[f]
            assert values[b[j]:b[j + 1]].tolist() == w, (f, user)
        assert stamps[j] == want[3]
    if dense:
        assert got["seen_items"][1].max() == SEEN_ITEMS and got["recent_items"][1].max() == RECENT_ITEMS


def test_merge_refuses_inconsistent_stored_lists():
    users = np.array([1])
    stored = {"recent_items": _flat([[1, 2]]), "recent_times": _flat([[5]]), "seen_items": _flat([[1, 2]])}
    with pytest.raises(FeedbackError, match="recent_items and recent_times differ"):
        merge_lists(users, stored, np.zeros(1, np.int64), users, np.array([3]), np.array([9]), np.array([True]), 0)


def test_int64_list_codec_is_protobufs_layout():
    codec = Int64ListCodec()
    rng = np.random.default_rng(0)
    lists = [[], [0, 1, 127, 128, 16383, 16384, -1, 2**63 - 1, -(2**63)], rng.integers(0, 2**50, 300).tolist(),
             [], rng.integers(0, 2000, 1000).tolist()]
    flat, lengths = _flat([np.asarray(x, np.int64) for x in lists])
    cells = codec.encode(flat, lengths)
    assert cells == [ValueProto(int64_list_val=Int64List(val=x)).SerializeToString() for x in lists]
    values, got = codec.decode(cells + [None])
    assert got.tolist() == [len(x) for x in lists] + [0]
    assert values.tolist() == [v for x in lists for v in x]


def test_int64_list_codec_rejects_foreign_cells():
    codec = Int64ListCodec()
    with pytest.raises(AutofeatError, match="integer list value"):
        codec.decode([ValueProto(float_list_val={"val": [1.0, 2.0]}).SerializeToString()])
