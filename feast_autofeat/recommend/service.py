"""``feast-autofeat serve``: the recommender over HTTP (FastAPI; OpenAPI docs at ``/docs``).

``GET /recommend?user_id=1&k=10[&recent_items=50,172,133]`` -> items, scores, model version, source. Ids are the
repo's own (``user_id=A2SUAM1J3GNN3B`` for a String key); the response carries them back as they are.
``POST /feedback`` with ``{"events": [{"user_id", "item_id", "event_timestamp"[, "event_type"][, "rating"]}]}``
-> how many were recorded; the whole batch or nothing (``recommend.feedback``); the next ``/recommend`` for
those users reflects them.
``GET /healthz`` -> status, live model version, catalogue size, online-store round trip.
Bad input (ids of the wrong type or out of range, k out of range) answers 422 with the reason; an unknown user
answers 200 with the popularity fallback (``source: "popularity"``); invalid feedback answers 422 naming each bad
event; a failing online store answers 503.
"""

from __future__ import annotations

import gc
import logging

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from feast_autofeat.errors import AutofeatError
from feast_autofeat.models.base import SchemaError

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


def create_app(recommender):
    from fastapi import FastAPI, HTTPException, Query

    app = FastAPI(title="feast-autofeat recommender", version=recommender.version,
                  description="Two-tower recommendations served from Feast online features.")

    @app.get("/recommend")
    def recommend(user_id: str = Query(..., description="the user's id (the user entity's key type)"),
                  k: int = Query(10, description="how many items"),
                  recent_items: str | None = Query(None, description="comma-separated item ids (optional; "
                                                   "default: the user's stored history)")) -> dict:
        try:
            recent = None if recent_items is None else [recommender.parse_item(x.strip())
                                                        for x in recent_items.split(",") if x.strip()]
            return recommender.recommend(recommender.parse_user(user_id), k, recent).to_dict()
        except SchemaError as exc:
            raise HTTPException(422, str(exc)) from None
        except AutofeatError as exc:
            raise HTTPException(500, str(exc)) from None
        except Exception as exc:  # the online store (Redis) going away: the client may retry
            log.exception("recommend failed")
            raise HTTPException(503, f"online store unavailable: {type(exc).__name__}: {exc}") from None

    @app.post("/feedback")
    def feedback(body: Feedback) -> dict:
        try:
            return recommender.record_feedback([e.model_dump(exclude_unset=True) for e in body.events]).to_dict()
        except SchemaError as exc:
            raise HTTPException(422, str(exc)) from None
        except Exception as exc:  # nothing was recorded; the client may retry
            log.exception("feedback failed")
            raise HTTPException(503, f"feedback not recorded: {type(exc).__name__}: {exc}") from None

    @app.get("/healthz")
    def healthz() -> dict:
        try:
            return recommender.healthz()
        except Exception as exc:
            raise HTTPException(503, f"unhealthy: {type(exc).__name__}: {exc}") from None

    return app


def serve(repo, host: str = "127.0.0.1", port: int = 8000, index: str = "auto", yaml: str | None = None,
          name: str | None = None) -> None:
    import uvicorn

    from feast_autofeat.recommend.recommender import Recommender

    app = create_app(Recommender(repo, index=index, yaml=yaml, name=name))
    # the models, index, registry and Feast's imports (~350k objects) are loaded for good: freezing them keeps
    # them out of every later full collection, which otherwise walk them all and set the p99 (README, latency)
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="warning")
