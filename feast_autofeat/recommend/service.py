"""``feast-autofeat serve``: the recommender over HTTP (FastAPI; OpenAPI docs at ``/docs``).

``GET /recommend?user_id=1&k=10[&recent_items=50,172,133]`` -> items, scores, model version, source. Ids are the
repo's own (``user_id=A2SUAM1J3GNN3B`` for a String key); the response carries them back as they are.
``POST /feedback`` with ``{"events": [{"user_id", "item_id", "event_timestamp"[, "event_type"][, "rating"]}]}``
-> how many were recorded; the whole batch or nothing (``recommend.feedback``); the next ``/recommend`` for
those users reflects them. An ``Idempotency-Key`` header makes a retried batch count once; exact duplicate events
inside one batch are recorded once.
``GET /search?q=star+trek[&user_id=1][&k=10]`` -> items, scores, source (``personalized``, or ``text`` with no
user or an unknown one), the two-tower and text versions (``recommend.search``); an empty, blank, over-long (over
1,000 characters) or invalid UTF-8 ``q`` answers 422 naming it; served when the repo declares a text view of the
items (none: no such path), 503 while that view has no live, materialized version.
``GET /healthz`` -> status, live model version, catalogue size, online-store round trip, batches served.
Concurrent ``/recommend`` requests are answered together (``batching``: one online read, one pass of the query
tower, one index search per batch; each answer the one its request gets alone), computed off the event loop,
which never waits on Redis or the model; ``serve --workers N`` runs N such processes on one port.
Bad input (ids of the wrong type or out of range, k out of range) answers 422 with the reason, never the input;
an unknown user answers 200 with the popularity fallback (``source: "popularity"``); invalid feedback answers 422
naming each bad event; a body over the limit 413; a missing or wrong token 401, a read token on /feedback 403
(``security``); an online store that fails or does not answer within its timeout 503, and /healthz then says
``degraded`` (503) within a second.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.requests import Request  # at module level: the endpoints' annotations resolve here

from feast_autofeat.errors import AutofeatError
from feast_autofeat.models.base import SchemaError
from feast_autofeat.recommend.batching import MAX_BATCH, MAX_WAITING, Batcher, Busy
from feast_autofeat.recommend.search import SEARCH_WEIGHT, SearchUnavailable
from feast_autofeat.recommend.security import MAX_BODY_BYTES, MAX_EVENTS, Guard

log = logging.getLogger(__name__)


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: StrictInt | StrictStr = Field(description="the user's id, of the user entity's key type")
    item_id: StrictInt | StrictStr = Field(description="the item's id, of the item entity's key type")
    event_type: str | None = Field(None, description="one of the log's event types, e.g. rating / click / purchase "
                                   "(where the log has event types)")
    event_timestamp: str = Field(description="ISO 8601, e.g. 2024-05-01T12:00:00Z (naive = UTC)")
    rating: float | None = Field(None, description="where the dataset has ratings")


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event]


HEALTH_TIMEOUT_S = 1.0  # /healthz answers within this, whatever the online store does
REQUEST_TIMEOUT_S = 5.0  # a /recommend waits at most this for its answer


def check_utf8(raw_query: bytes, field: str) -> None:
    """A query-string parameter whose percent-encoded bytes are not UTF-8 is a ``SchemaError`` naming it (the
    framework would silently turn them into replacement characters)."""
    from urllib.parse import unquote_to_bytes

    for pair in raw_query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) == field.encode():
            try:
                unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError:
                raise SchemaError(f"{field} is not valid UTF-8.") from None


def _json(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def create_app(recommender, tokens=None, max_body_bytes: int = MAX_BODY_BYTES, max_events: int = MAX_EVENTS,
               max_batch: int = MAX_BATCH, max_waiting: int = MAX_WAITING, request_timeout: float = REQUEST_TIMEOUT_S):
    """The service. ``tokens``: a ``security.Tokens`` (None: no authentication); bodies over ``max_body_bytes``
    answer 413 and batches over ``max_events`` 422. Error bodies name the problem, never the request's content,
    paths or addresses (those go to the log). Concurrent ``/recommend`` requests are answered together, up to
    ``max_batch`` at a time (``batching``); more than ``max_waiting`` waiting, or no answer within
    ``request_timeout`` seconds: 503."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    from fastapi import FastAPI, Header, HTTPException, Query
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="feast-autofeat recommender", version=recommender.version,
                  description="Two-tower recommendations served from Feast online features. Every path but "
                  "/healthz takes `Authorization: Bearer <token>` (read; /feedback: write).")
    probe = ThreadPoolExecutor(max_workers=2, thread_name_prefix="healthz")

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):  # FastAPI's default echoes the input back
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    def unavailable(what: str, exc: Exception) -> HTTPException:
        log.error("%s: online store failed: %s: %s", what, type(exc).__name__, exc)
        return HTTPException(503, f"{what}: the online store did not answer; retry shortly")

    def answer(requests: list) -> list:
        try:
            return recommender.recommend_many(requests)
        except SchemaError:  # one bad request must not fail the others: each alone, each its own answer
            out = []
            for r in requests:
                try:
                    out.append(recommender.recommend_many([r])[0])
                except Exception as exc:  # noqa: BLE001 - that caller gets it
                    out.append(exc)
            return out

    batcher = Batcher(answer, max_batch=max_batch, max_waiting=max_waiting, name="recommend")
    app.state.batcher = batcher

    @app.get("/recommend")
    async def recommend(user_id: str = Query(..., max_length=256, description="the user's id (the user entity's "
                                             "key type)"),
                        k: int = Query(10, description="how many items"),
                        recent_items: str | None = Query(None, max_length=20_000, description="comma-separated "
                                                         "item ids (optional; default: the user's stored history)"),
                        ):
        try:
            recent = None if recent_items is None else [recommender.parse_item(x.strip())
                                                        for x in recent_items.split(",") if x.strip()]
            user = recommender.parse_user(user_id)
            if not 1 <= k <= len(recommender.index):
                raise SchemaError(f"k must be between 1 and the catalogue size {len(recommender.index)}, got {k}.")
            future = batcher.submit((user, k, recent))
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout=request_timeout)
            return Response(_json(result.to_dict()), media_type="application/json")
        except SchemaError as exc:
            raise HTTPException(422, str(exc)) from None
        except Busy:
            log.error("recommend: %d requests already waiting", max_waiting)
            raise HTTPException(503, "recommend: the server is busy; retry shortly") from None
        except asyncio.TimeoutError:
            log.error("recommend: no answer within %.1f s", request_timeout)
            raise HTTPException(503, "recommend: no answer in time; retry shortly") from None
        except AutofeatError as exc:
            log.error("recommend failed: %s", exc)
            raise HTTPException(500, "recommendation failed; the server log has the reason") from None
        except Exception as exc:  # the online store (Redis) going away or timing out: the client may retry
            raise unavailable("recommend", exc) from None

    def search(request: Request,
               q: str = Query(..., max_length=4000, description="the query text (at most 1,000 characters)"),
               user_id: str | None = Query(None, max_length=256, description="the user to personalize for "
                                           "(optional; unknown or absent: text only)"),
               k: int = Query(10, description="how many items")):
        try:
            check_utf8(request.scope.get("query_string", b""), "q")
            user = None if user_id is None else recommender.parse_user(user_id)
            return Response(_json(recommender.search(q, user_id=user, k=k).to_dict()), media_type="application/json")
        except SchemaError as exc:
            raise HTTPException(422, str(exc)) from None
        except SearchUnavailable as exc:
            log.error("search: %s", exc)
            raise HTTPException(503, "search is not available; the server log has the reason") from None
        except AutofeatError as exc:
            log.error("search failed: %s", exc)
            raise HTTPException(500, "search failed; the server log has the reason") from None
        except Exception as exc:  # the online store (Redis) going away or timing out: the client may retry
            raise unavailable("search", exc) from None

    if getattr(recommender, "text_decl", None) is not None:  # the repo declares a text view of the items
        app.get("/search")(search)

    @app.post("/feedback")
    def feedback(body: Feedback, idempotency_key: str | None = Header(
            None, max_length=128, description="the batch's own key (a UUID): a batch sent again under the same "
            "key, e.g. a retry after a timeout, is recorded once; the response then says replayed")) -> dict:
        if len(body.events) > max_events:
            raise HTTPException(422, f"events: at most {max_events} per request, got {len(body.events)}; split "
                                "the batch")
        try:
            result = recommender.record_feedback([e.model_dump(exclude_unset=True) for e in body.events],
                                                 idempotency_key).to_dict()
            result.pop("part", None)  # a path on this machine: the log has it, the client does not need it
            return result
        except SchemaError as exc:
            raise HTTPException(422, str(exc)) from None
        except Exception as exc:  # nothing was recorded; the client may retry
            raise unavailable("feedback not recorded", exc) from None

    @app.get("/healthz")
    def healthz():
        try:
            return {**probe.submit(recommender.healthz).result(timeout=HEALTH_TIMEOUT_S),
                    "batching": {"batches": batcher.batches, "requests": batcher.requests}}
        except FutureTimeout:
            log.error("healthz: the online store did not answer within %.1f s", HEALTH_TIMEOUT_S)
            reason = f"the online store did not answer within {HEALTH_TIMEOUT_S:g} s"
        except Exception as exc:
            log.error("healthz: %s: %s", type(exc).__name__, exc)
            reason = "the online store is unreachable" if not isinstance(exc, AutofeatError) else str(exc)
        return JSONResponse({"status": "degraded", "reason": reason}, status_code=503)

    app.add_middleware(Guard, tokens=tokens, max_body_bytes=max_body_bytes)
    return app


WORKER_ENV = "AUTOFEAT_SERVE_WORKER"  # what each worker process of `serve --workers N` builds its app from


def _build(options: dict, tokens):
    import torch

    from feast_autofeat.recommend.recommender import Recommender

    # requests run one batch at a time per process: intra-op threads only contend with the event loop (and with
    # the other workers); one thread answers a batch of 16 in a third of the time two threads take
    torch.set_num_threads(1)
    # the batcher thread computes while the event loop parses the next requests: the loop gets the GIL back
    # within 1 ms instead of Python's 5 (on 2 cores, 16 connections: p99 from about 60 ms to under 50)
    sys.setswitchinterval(0.001)
    rec = Recommender(options["repo"], index=options["index"], yaml=options["yaml"], name=options["name"],
                      store_timeout=options["store_timeout"], search_view=options.get("search_view"),
                      search_weight=options.get("search_weight", SEARCH_WEIGHT))
    app = create_app(rec, tokens=tokens, max_body_bytes=options["max_body_bytes"],
                     max_events=options["max_events"], max_batch=options["max_batch"])
    # the models, index, registry and Feast's imports (~350k objects) are loaded for good: freezing them keeps
    # them out of every later full collection, which otherwise walk them all and set the p99 (README, latency)
    gc.collect()
    gc.freeze()
    return app


def worker_app():
    """The app of one worker process (``serve --workers N``), from the options its parent left in the
    environment (token digests, never tokens)."""
    from feast_autofeat.recommend.security import Tokens

    options = json.loads(os.environ[WORKER_ENV])
    digests = options.pop("tokens")
    tokens = None if digests is None else Tokens(tuple(bytes.fromhex(d) for d in digests["read"]),
                                                 tuple(bytes.fromhex(d) for d in digests["write"]))
    return _build(options, tokens)


def serve(repo, host: str = "127.0.0.1", port: int = 8000, index: str = "auto", yaml: str | None = None,
          name: str | None = None, tokens=None, max_body_bytes: int = MAX_BODY_BYTES,
          max_events: int = MAX_EVENTS, store_timeout: float = 0.5, workers: int = 1,
          max_batch: int = MAX_BATCH, search_view: str | None = None,
          search_weight: float = SEARCH_WEIGHT) -> None:
    """Serve until stopped. ``workers`` > 1: that many processes share the port (uvicorn's supervisor), each
    with its own models; the parent loads and verifies everything once first, so a damaged model stops
    ``serve`` at start, named, whatever the number of workers."""
    import uvicorn

    if tokens is None:
        log.warning("serving WITHOUT authentication (--no-auth): anyone who reaches %s:%d can read and write",
                    host, port)
    options = {"repo": str(repo), "index": index, "yaml": yaml, "name": name, "store_timeout": store_timeout,
               "max_body_bytes": max_body_bytes, "max_events": max_events, "max_batch": max_batch,
               "search_view": search_view, "search_weight": search_weight}
    app = _build(options, tokens)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5)
        return
    del app
    os.environ[WORKER_ENV] = json.dumps({**options, "tokens": None if tokens is None else {
        "read": [d.hex() for d in tokens.read], "write": [d.hex() for d in tokens.write]}})
    uvicorn.run("feast_autofeat.recommend.service:worker_app", factory=True, workers=workers, host=host, port=port,
                log_level="warning", timeout_keep_alive=5)
