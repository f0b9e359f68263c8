"""Opportunistic batching for the service: concurrent requests are answered together, none waits for company.

One worker thread takes the oldest waiting request and every other request already waiting (up to
``max_batch``), answers them with one call (``Recommender.recommend_many``: one online read, one pass of the
query tower, one index search), and hands each caller its own result or error. A request arriving at an idle
server is answered at once, alone; under load the batches grow by themselves, and so does throughput (on
ML-100K a batch of 16 costs about a third per request of 16 single calls). The event loop only enqueues and
awaits: it never blocks on the online store or the model.

Bounds: at most ``max_waiting`` requests wait (more: ``Busy``, which the service answers 503), and a caller
stops waiting after ``timeout`` seconds.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

MAX_BATCH = 32  # requests answered together at most
MAX_WAITING = 1024  # more waiting: ``Busy``


class Busy(Exception):
    """More requests are waiting than the server accepts: the client should retry shortly."""


class Batcher:
    """``submit(request) -> Future``; ``fn(list of requests) -> list of results`` (same order; an entry may be
    an exception, which that caller gets). An exception raised by ``fn`` goes to every caller of the batch."""

    def __init__(self, fn: Callable[[list], list], max_batch: int = MAX_BATCH, max_waiting: int = MAX_WAITING,
                 name: str = "batcher") -> None:
        if max_batch < 1 or max_waiting < 1:
            raise ValueError("max_batch and max_waiting must be positive")
        self.fn, self.max_batch, self.max_waiting = fn, max_batch, max_waiting
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting = 0
        self._lock = threading.Lock()
        self.batches = 0  # served batches and requests, for /healthz and the tests
        self.requests = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, request) -> Future:
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise Busy(f"{self.max_waiting} requests are already waiting")
            self._waiting += 1
        future: Future = Future()
        self._queue.put((request, future))
        return future

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            with self._lock:
                self._waiting -= len(batch)
            live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]  # callers that gave up: skipped
            if not live:
                continue
            try:
                results = self.fn([r for r, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} requests")
            except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets it
                results = [exc] * len(live)
            self.batches += 1
            self.requests += len(live)
            for (_, future), result in zip(live, results):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
