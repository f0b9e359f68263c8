"""``Recommender.recommend(user_id, k, recent_items=None)``: online features in, top-K items out.

Per request: the user's history (``user_recent_items``, or the caller's ``recent_items``) and the
``two_tower_query`` features come from the online store through ``store.get_online_features`` (two reads: the
session embedding is an on-demand view of the history); the query tower turns them into a vector; the item
index returns the best items, never one the user already has in their history.

Feast applies no TTL to online reads, while its point-in-time join (what the model was trained on) does; the
recommender applies the same rule to what it reads (a feature whose row is older than its view's TTL at request
time counts as missing), so serving never sees a stale value that training would have seen as missing.

Unknown users (no profile online and no history): the documented fallback is the catalogue's most popular
items (positive interactions in the offline store at start-up), marked ``source="popularity"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from feast.online_response import TIMESTAMP_POSTFIX

from feast_autofeat.errors import AutofeatError
from feast_autofeat.models.base import SchemaError
from feast_autofeat.recommend.data import QUERY_SERVICE, RECENT_FIELD
from feast_autofeat.recommend.index import build_index

log = logging.getLogger(__name__)
ITEM_VIEW = "item_two_tower"
EMPTY_HISTORY = -(2**62)  # stands for "no history" in a request (ids are ignored when unknown)


@dataclass(frozen=True)
class Recommendation:
    user_id: int
    items: list[int]
    scores: list[float]  # two-tower: cosine similarity; popularity: number of positive interactions
    model_version: str
    source: str  # "two-tower" or "popularity" (unknown user)
    history_items: int  # how many known items were excluded

    def to_dict(self) -> dict:
        return asdict(self)


def _int(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SchemaError(f"{what} must be an integer, got {type(value).__name__} {value!r}.")
    return int(value)


class Recommender:
    """Loads the live two-tower version, its materialized item vectors and the index once; thread-safe reads."""

    def __init__(self, repo: str | Path, version: str | None = None, index: str = "auto", store=None,
                 yaml: str | None = None, root=None, clock: Callable[[], datetime] | None = None):
        """``clock``: the request time for TTLs (default: now, UTC); replaying history passes its own."""
        from feast import FeatureStore

        from feast_autofeat.artifacts import model_root
        from feast_autofeat.feast.embeddings import Deployments, view_name
        from feast_autofeat.models.two_tower import TwoTower

        self.repo = Path(repo)
        entry = Deployments(self.repo).get(ITEM_VIEW)
        self.version = version or (entry.live if entry else None)
        if self.version is None:
            raise AutofeatError(f"no live {ITEM_VIEW} version in {self.repo}: train one (`feast-autofeat train "
                                f"two-tower`), deploy it (`feast-autofeat deploy {ITEM_VIEW} two_tower VERSION "
                                "--live`) and materialize it (`feast materialize`).")
        self.store = store or FeatureStore(repo_path=str(self.repo),
                                           fs_yaml_file=self.repo / yaml if yaml else None)
        self.model = TwoTower.load(model_root(root, default=self.repo / "models"), self.version)
        self.service = self.store.get_feature_service(QUERY_SERVICE)
        ids, vectors = self._item_vectors(view_name(ITEM_VIEW, self.version))
        self.index = build_index(ids, vectors, index)
        self.popular, self.popular_counts = self._popular()
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._ttl = {}  # full feature name -> TTL seconds, for the service's views that have one
        for proj in self.service.feature_view_projections:
            try:
                ttl = self.store.get_feature_view(proj.name).ttl
            except Exception:  # on-demand views have no TTL
                continue
            if ttl and ttl.total_seconds() > 0:
                self._ttl.update({f"{proj.name_to_use()}__{f.name}": ttl.total_seconds() for f in proj.features})
        self._profile_col = next((f"user_profile__{f.name}" for f in
                                  self.store.get_feature_view("user_profile").features), None)

    def _item_vectors(self, view: str) -> tuple[np.ndarray, np.ndarray]:
        """The latest materialized vector of every item (the view's offline snapshots)."""
        fv = self.store.get_feature_view(view)
        src = fv.batch_source
        df = self.store._get_provider().offline_store.pull_latest_from_table_or_query(
            config=self.store.config, data_source=src, join_key_columns=["item_id"],
            feature_name_columns=["embedding"], timestamp_field=src.timestamp_field, created_timestamp_column=None,
            start_date=datetime(1970, 1, 1, tzinfo=timezone.utc), end_date=datetime.now(timezone.utc)).to_df()
        if df.empty:
            raise AutofeatError(f"{view} has no materialized vectors: run `feast materialize` for it first.")
        df = df.sort_values("item_id")
        return df.item_id.to_numpy(np.int64), np.stack(df.embedding.to_numpy()).astype(np.float32)

    def _popular(self, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items with the most positive interactions, and their counts."""
        from feast_autofeat.recommend.data import positive_events

        ev = positive_events(self.store, self.repo)
        counts = ev.groupby("item_id").size().sort_values(ascending=False, kind="stable")
        return counts.index.to_numpy(np.int64)[:n], counts.to_numpy(np.float64)[:n]

    # ---- requests
    def history(self, user_id: int) -> list[int] | None:
        """The user's stored history (newest first), or None for a user the store does not know."""
        out = self.store.get_online_features(features=["user_recent_items:recent_items"],
                                             entity_rows=[{"user_id": user_id}]).to_dict()
        return out["recent_items"][0]

    def query(self, user_id, recent_items: list[int] | None = None) -> tuple[np.ndarray | None, list[int]]:
        """(the query tower's vector for this request, the history it used); the vector is None for a user
        the store does not know who brings no history (the popularity fallback's case)."""
        user_id = _int(user_id, "user_id")
        if recent_items is not None:
            if not isinstance(recent_items, (list, tuple, np.ndarray)):
                raise SchemaError(f"recent_items must be a list of item ids, got {type(recent_items).__name__}.")
            recent_items = [_int(i, "each of recent_items") for i in recent_items]
        history = list((recent_items if recent_items is not None else self.history(user_id)) or [])
        # Feast cannot type an empty request list; an id no model knows folds in exactly like an empty history
        feats = self.store.get_online_features(
            features=self.service, entity_rows=[{"user_id": user_id, RECENT_FIELD: history or [EMPTY_HISTORY]}],
            full_feature_names=True).to_dict(include_event_timestamps=bool(self._ttl))
        if self._ttl:
            now = self.clock().timestamp()
            for col, ttl in self._ttl.items():
                if feats[col + TIMESTAMP_POSTFIX][0] + ttl < now:
                    feats[col] = [None]
        known_user = self._profile_col is not None and feats.get(self._profile_col, [None])[0] is not None
        if not known_user and not history:
            return None, history
        record = {k: v[0] for k, v in feats.items()}
        record[RECENT_FIELD] = history
        return self.model.query_vector(record), history

    def recommend(self, user_id, k: int = 10, recent_items: list[int] | None = None) -> Recommendation:
        k = _int(k, "k")
        if not 1 <= k <= len(self.index):
            raise SchemaError(f"k must be between 1 and the catalogue size {len(self.index)}, got {k}.")
        query, history = self.query(user_id, recent_items)
        user_id = int(user_id)
        if query is None:
            return Recommendation(user_id, self.popular[:k].tolist(), self.popular_counts[:k].tolist(),
                                  self.version, "popularity", 0)
        seen = set(history)
        ids, scores = self.index.search(query[None, :], k, exclude=[seen])
        ok = ids[0] >= 0
        return Recommendation(user_id, ids[0][ok].tolist(), scores[0][ok].astype(float).tolist(), self.version,
                              "two-tower", len(seen))

    def healthz(self) -> dict:
        t = time.perf_counter()
        self.store.get_online_features(features=["user_recent_items:recent_items"],
                                       entity_rows=[{"user_id": 0}]).to_dict()
        return {"status": "ok", "model_version": self.version, "items": len(self.index),
                "index": self.index.kind, "online_store_ms": (time.perf_counter() - t) * 1e3}
