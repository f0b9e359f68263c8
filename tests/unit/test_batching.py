"""The service's batcher (pure logic): concurrent requests answered together, each caller its own result."""

from __future__ import annotations

import threading
import time

import pytest

from feast_autofeat.recommend.batching import Batcher, Busy


def test_waiting_requests_are_answered_together_in_order_each_its_own():
    gate = threading.Event()
    seen: list[list] = []

    def fn(requests):
        gate.wait(5)  # the first batch holds the worker while the others queue up
        seen.append(list(requests))
        return [ValueError(f"bad {r}") if r == 3 else r * 10 for r in requests]

    b = Batcher(fn, max_batch=4)
    first = b.submit(0)
    time.sleep(0.05)  # the worker has taken the first request alone
    futures = [b.submit(i) for i in range(1, 7)]
    gate.set()
    assert first.result(5) == 0
    assert [f.result(5) for f in futures if f is not futures[2]] == [10, 20, 40, 50, 60]
    with pytest.raises(ValueError, match="bad 3"):
        futures[2].result(5)
    assert seen == [[0], [1, 2, 3, 4], [5, 6]]  # at most max_batch, in arrival order
    assert (b.batches, b.requests) == (3, 7)


def test_a_failing_batch_fails_each_caller_and_the_worker_goes_on():
    calls = []

    def fn(requests):
        calls.append(requests)
        if len(calls) == 1:
            raise ConnectionError("store gone")
        return requests

    b = Batcher(fn)
    with pytest.raises(ConnectionError):
        b.submit("a").result(5)
    assert b.submit("b").result(5) == "b"


def test_bounded_waiting_and_cancelled_callers_skipped():
    gate = threading.Event()
    ran = []

    def fn(requests):
        gate.wait(5)
        ran.extend(requests)
        return requests

    b = Batcher(fn, max_batch=8, max_waiting=2)
    b.submit("held")
    time.sleep(0.05)
    kept, gone = b.submit("kept"), b.submit("gone")
    with pytest.raises(Busy):
        b.submit("over")
    assert gone.cancel()  # the caller gave up (its timeout): never computed
    gate.set()
    assert kept.result(5) == "kept"
    assert ran == ["held", "kept"]
    with pytest.raises(ValueError):
        Batcher(fn, max_batch=0)
