"""``Recommender.recommend(user_id, k, recent_items=None)``: online features in, top-K items out.

Per request: the user's history (the declaration's history view, or the caller's ``recent_items``) and the
stored query features come from the online store in one read (``recommend.online``: on Redis one HMGET
of Feast's own layout through Feast's Redis store code, elsewhere ``store.get_online_features``); the session
embedding of the history is computed in-process by the function its on-demand view runs (same model version,
same code); the query tower turns them into a vector; the item index returns the best items, never one the user
already has among their recent or seen items.

``record_feedback(events)`` appends events to the log and pushes the users' fresh lists online
(``recommend.feedback``): the next request for those users already reflects them.

Feast applies no TTL to online reads, while its point-in-time join (what the model was trained on) does; the
recommender applies the same rule to what it reads (a feature whose row is older than its view's TTL at request
time counts as missing), so serving never sees a stale value that training would have seen as missing.

Unknown users (no stored query feature online and no history): the documented fallback is the catalogue's most
popular items (positive interactions of the declared log, read at start-up; feedback logged since counts once
the recommender restarts or ``feast-autofeat refresh`` cuts over), marked ``source="popularity"``.

Ids are the repo's own: Int64, Int32 or String join keys, checked against the declared entities' types (a
wrong type or an out-of-range integer is a ``SchemaError`` naming the field).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from feast.online_response import TIMESTAMP_POSTFIX

from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.deployments import Deployments
from feast_autofeat.feast.writer import bound_store_waits
from feast_autofeat.ids import IdError, parse_id
from feast_autofeat.models.base import SchemaError
from feast_autofeat.recommend.data import RECENT_FIELD, QueryFeatures, query_features
from feast_autofeat.recommend.feedback import FeedbackLog, FeedbackResult
from feast_autofeat.recommend.index import build_index
from feast_autofeat.recommend.online import online_reader
from feast_autofeat.recommend.search import (
    CANDIDATES,
    SEARCH_WEIGHT,
    SearchResult,
    SearchUnavailable,
    TextSide,
    fuse,
    item_text_view,
    load_text_side,
    user_scores,
)

log = logging.getLogger(__name__)
HISTORY_LISTS = ("recent_items", "seen_items")  # what serving reads of the history view


@dataclass(frozen=True)
class Recommendation:
    user_id: int | str
    items: list
    scores: list[float]  # two-tower: cosine similarity; popularity: number of positive interactions
    model_version: str
    source: str  # "two-tower" or "popularity" (unknown user)
    history_items: int  # how many known items (recent positives and seen items) were excluded

    def to_dict(self) -> dict:
        return asdict(self)


def _int(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SchemaError(f"{what} must be an integer, got {type(value).__name__}.")
    return int(value)


HEALTH_USERS = 8


def _id(value, kind: str, what: str, text: bool = True):
    try:
        return parse_id(value, kind, what, text)
    except IdError as exc:
        raise SchemaError(str(exc)) from None


@dataclass(frozen=True)
class Bundle:
    """One two-tower version with everything a request needs: the model, its item index, and its query
    features pinned to the encoder versions it was trained with. Swapped whole on a cut-over."""

    version: str
    model: object  # TwoTower
    index: object
    features: QueryFeatures
    read: object  # online.RedisRead / FeastRead: user id(s) -> {full feature name: value} of the stored refs
    # and history lists (``read(user)``, ``read.many(users)``)
    columns: dict[str, str]  # full feature name read -> the model's column
    stored_columns: tuple[str, ...] = ()  # the stored query features' columns: a user with any of them is known
    item_ids: np.ndarray | None = None  # the materialized items, sorted, and their search vectors (what the index
    search_vectors: np.ndarray | None = None  # holds): ``search`` scores its text candidates with them


class Recommender:
    """Serves the live version of the repo's two-tower declaration (``name``, or the only one; or a pinned
    ``version``): model, materialized item vectors and index loaded once per version; thread-safe.

    Cut-over without downtime: while following the live version (the default when no ``version`` is given),
    requests look at ``embeddings.json`` at most every ``check_every`` seconds; when the two-tower's live
    version changed (``feast-autofeat promote / rollback``, or ``refresh``), a background thread loads the new
    version and swaps it in whole. Requests keep being answered by the old one meanwhile, and each response is
    computed from exactly one version, which it names (``model_version``)."""

    def __init__(self, repo, version: str | None = None, index: str = "auto", store=None,
                 yaml: str | None = None, root=None, clock: Callable[[], datetime] | None = None,
                 check_every: float = 1.0, online_read: str = "auto", name: str | None = None,
                 store_timeout: float | None = None, search_view: str | None = None,
                 search_weight: float = SEARCH_WEIGHT):
        """``repo``: a path or ``Repo``; ``name``: the two-tower declaration (default: the repo's only one).
        ``clock``: the request time for TTLs (default: now, UTC); replaying history passes its own.
        ``online_read``: ``auto`` (one HMGET of Feast's layout on Redis, else ``get_online_features``),
        ``redis`` or ``feast`` (``recommend.online``). ``store_timeout``: seconds any Redis call may take before
        it fails, without retries (``writer.bound_store_waits``; default: redis-py's, none).
        ``search_view``: the text view of the items that ``search`` queries (default: the repo's only one; none
        declared: no search); ``search_weight``: the two-tower term's weight in search (``recommend.search``)."""
        from feast_autofeat.repo import Repo

        self.project = Repo(repo.path if isinstance(repo, Repo) else repo, yaml, store=store)
        self.repo = self.project.path
        self.decl = self.project.two_tower(name)
        self.name = self.decl.name
        self.follow_live = version is None
        self.index_kind = index
        self.root = Path(root) if root else self.decl.root
        self.check_every = check_every
        self.online_read = online_read
        inter = self.decl.interactions
        self.user_key, self.user_kind, self.item_kind = inter.user_key, inter.user_kind(), inter.item_kind()
        self.history_refs = ([f"{self.decl.history_name}:{f}" for f in HISTORY_LISTS] if self.decl.history_name
                             else [])
        version = version or self._live()
        if version is None:
            raise AutofeatError(f"no live {self.name} version in {self.repo}: train one (`feast-autofeat train "
                                f"{self.name}`), deploy it (`feast-autofeat deploy {self.name}`) and materialize "
                                "it (`feast materialize`).")
        self.store = self.project.store
        bound_store_waits(self.store, store_timeout)
        self.search_weight = float(search_weight)
        self.text_decl = item_text_view(self.project, self.decl, search_view)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._bundle = self.load(version)
        self.popular, self.popular_counts = self._popular()
        self._feedback: FeedbackLog | None = None
        self._lock = threading.Lock()
        self._next_check = time.monotonic() + check_every
        self._loading: str | None = None
        self._failed: dict[str, float] = {}  # version -> when loading it failed (retried after a minute)
        self._text: TextSide | None = None
        self._text_loading = False
        if self.text_decl is not None:  # loaded and verified now: a damaged text version stops start-up
            text_version = Deployments(self.repo).live(self.text_decl.name)
            if text_version is None:
                log.warning("search is off: %s has no live version (`feast-autofeat deploy %s`, then "
                            "`feast materialize`)", self.text_decl.name, self.text_decl.name)
            else:
                self._text = self.load_text(text_version)

    # ---- versions
    @property
    def version(self) -> str:
        return self._bundle.version

    @property
    def model(self):
        return self._bundle.model

    @property
    def index(self):
        return self._bundle.index

    def _live(self) -> str | None:
        return Deployments(self.repo).live(self.name)

    def load_text(self, version: str) -> TextSide:
        """Load (and verify) a version of the search text view and index its materialized item vectors."""
        side = load_text_side(self.store, self.text_decl.root, self.text_decl.name, version,
                              self.decl.interactions.item_key, self.index_kind)
        log.info("search: %s %s over %d items; queries encoded by %s", self.text_decl.name, version,
                 len(side.index), side.encoder.query_backend)
        return side

    def load(self, version: str) -> Bundle:
        """Load a two-tower version, its item vectors (the view's offline snapshots) and index, and its pinned
        query features; does not serve it (``swap`` does)."""
        from feast_autofeat.feast.deployments import view_name
        from feast_autofeat.models.two_tower import TwoTower

        self.store.refresh_registry()  # views deployed since start-up (a refresh's new versions)
        model = TwoTower.load(self.root, version)
        features = query_features(self.store, self.decl, model.saved_config_.get("encoders") or {})
        ids, vectors = self._item_vectors(view_name(self.name, version))
        if features.session is not None:  # load (and verify) the session model now, not at the first request
            features.session_columns([ids[:1].tolist()])
        refs = features.stored_refs + self.history_refs
        read = online_reader(self.store, refs, join_key=self.user_key, timestamps=bool(features.ttl),
                             kind=self.online_read)
        names = [r.replace(":", "__", 1) for r in refs]
        columns = {n: features.column(n) for n in names + [n + TIMESTAMP_POSTFIX for n in names]}
        # the index holds the model's search vectors: the materialized candidate vectors (plus category blocks)
        stored = tuple(features.column(r.replace(":", "__", 1)) for r in features.stored_refs)
        search_vectors = model.search_item_vectors(vectors, ids)
        index = build_index(ids, search_vectors, self.index_kind, tail=model.item_item_dims())
        kept = (ids, search_vectors) if self.text_decl is not None else (None, None)  # only search reads them
        return Bundle(version, model, index, features, read, columns, stored, *kept)

    def swap(self, bundle: Bundle) -> None:
        self._bundle = bundle  # one reference assignment: a request holds either the old bundle or the new one
        log.info("now serving %s %s", self.name, bundle.version)

    def reload(self) -> str:
        """Load and serve the live version now (synchronously); returns it."""
        live = self._live()
        if live and live != self._bundle.version:
            self.swap(self.load(live))
        text = Deployments(self.repo).live(self.text_decl.name) if self.text_decl is not None else None
        if text and (self._text is None or text != self._text.version):
            self._text = self.load_text(text)
        return self._bundle.version

    def _current(self) -> Bundle:
        if self.follow_live and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.check_every
            try:
                live = self._live()
            except Exception:  # embeddings.json mid-edit by hand: keep serving, look again later
                log.exception("reading %s failed", self.name)
                live = None
            if (live and live != self._bundle.version and self._loading is None
                    and time.monotonic() - self._failed.get(live, -1e9) > 60):
                self._loading = live
                threading.Thread(target=self._load_in_background, args=(live,), daemon=True).start()
            self._check_text()
        return self._bundle

    def _check_text(self) -> None:
        """The search text view's live version moved (deploy/promote/rollback): load it in the background."""
        if self.text_decl is None or self._text_loading:
            return
        try:
            live = Deployments(self.repo).live(self.text_decl.name)
        except Exception:
            return
        if (live and (self._text is None or live != self._text.version)
                and time.monotonic() - self._failed.get(live, -1e9) > 60):
            self._text_loading = True
            threading.Thread(target=self._load_text_in_background, args=(live,), daemon=True).start()

    def _load_text_in_background(self, version: str) -> None:
        try:
            self._text = self.load_text(version)
        except Exception:
            log.exception("could not load %s %s for search", self.text_decl.name, version)
            self._failed[version] = time.monotonic()
        finally:
            self._text_loading = False

    def _load_in_background(self, version: str) -> None:
        try:
            self.swap(self.load(version))
        except Exception:
            log.exception("could not load %s %s; still serving %s", self.name, version, self._bundle.version)
            self._failed[version] = time.monotonic()
        finally:
            self._loading = None

    def _item_vectors(self, view: str) -> tuple[np.ndarray, np.ndarray]:
        """The latest materialized vector of every item (the view's offline snapshots)."""
        from feast_autofeat.recommend.health import latest_vectors

        ids, vectors = latest_vectors(self.store, view, self.decl.interactions.item_key)
        if not len(ids):
            raise AutofeatError(f"{view} has no materialized vectors: run `feast materialize` for it first.")
        return ids, vectors

    def _popular(self, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items with the most positive interactions, and their counts."""
        from feast_autofeat.recommend.data import positive_events

        ev = positive_events(self.store, self.decl)
        counts = ev.groupby("item_id").size().sort_values(ascending=False, kind="stable")
        # the most active users: /healthz checks that the online store still holds something for them
        users = ev.groupby("user_id").size().sort_values(ascending=False, kind="stable").index[:HEALTH_USERS]
        self.active_users = users.tolist()
        return counts.index.to_numpy()[:n], counts.to_numpy(np.float64)[:n]

    # ---- requests
    def parse_user(self, user_id):
        """The user id (a request's text, e.g. a query parameter) as the user entity's key type, or a
        ``SchemaError`` naming ``user_id``. In-process calls pass typed ids: ``recommend`` takes no text for an
        integer key."""
        return _id(user_id, self.user_kind, "user_id")

    def parse_item(self, item_id):
        """An item id as the item entity's key type, or a ``SchemaError``."""
        return _id(item_id, self.item_kind, "each of recent_items")

    def history(self, user_id) -> tuple[list, list]:
        """The user's stored (recent positive items, seen items), newest first; empty for an unknown user."""
        if not self.history_refs:
            return [], []
        out = self.store.get_online_features(features=self.history_refs,
                                             entity_rows=[{self.user_key: self.parse_user(user_id)}]).to_dict()
        return out["recent_items"][0] or [], out["seen_items"][0] or []

    def query(self, user_id, recent_items: list | None = None,
              bundle: Bundle | None = None) -> tuple[np.ndarray | None, list]:
        """(the query tower's vector for this request, the items it must not return); the vector is None for
        a user the store does not know who brings no history (the popularity fallback's case)."""
        vectors, seen = self.queries([(user_id, recent_items)], bundle)
        return vectors[0], seen[0]

    def queries(self, requests: list[tuple], bundle: Bundle | None = None) -> tuple[list, list[list]]:
        """``query`` of a batch of (user id, recent items or None) requests: one online read for all of them
        (one pipeline of HMGETs on Redis) and one pass of the query tower."""
        b = bundle or self._current()
        users, recents = [], []
        for user_id, recent_items in requests:
            users.append(_id(user_id, self.user_kind, "user_id", text=False))
            if recent_items is not None:
                if not isinstance(recent_items, (list, tuple, np.ndarray)):
                    raise SchemaError(f"recent_items must be a list of item ids, got {type(recent_items).__name__}.")
                recent_items = [_id(i, self.item_kind, "each of recent_items", text=False) for i in recent_items]
            recents.append(recent_items)
        rows = b.read.many(users)  # the stored query features and the users' history lists
        history_view = self.decl.history_name
        now = self.clock().timestamp() if b.features.ttl else None
        records, at, seen_lists = [], [], []
        for i, (user_id, recent_items, raw) in enumerate(zip(users, recents, rows)):
            if recent_items is not None:  # the request's own history replaces the stored one
                history, seen = list(recent_items), list(recent_items)
            elif history_view:
                history = raw[f"{history_view}__recent_items"] or []
                seen = raw[f"{history_view}__seen_items"] or []
            else:
                history, seen = [], []
            feats = {b.columns.get(k) or b.features.column(k): v for k, v in raw.items()}
            for col, ttl in b.features.ttl.items():
                if feats[col + TIMESTAMP_POSTFIX] + ttl < now:
                    feats[col] = None
            if any(feats.get(c) is not None for c in b.stored_columns) or history:
                feats[RECENT_FIELD] = history
                feats["user_id"] = user_id
                records.append(feats)
                at.append(i)
                seen = list(set(seen).union(history))
            seen_lists.append(seen)
        vectors: list = [None] * len(requests)
        if records:
            if b.features.session is not None:  # the on-demand session embedding, computed as its view does
                session = b.features.session_columns([r[RECENT_FIELD] for r in records])
                for j, r in enumerate(records):
                    r.update({k: v[j] for k, v in session.items()})
            for i, vector in zip(at, b.model.search_query_vectors_of(records)):
                vectors[i] = vector
        return vectors, seen_lists

    def recommend(self, user_id, k: int = 10, recent_items: list | None = None) -> Recommendation:
        """The top ``k`` items for ``user_id``: never one the user already has (recent or seen); fewer than ``k``
        when fewer remain; every score finite."""
        return self.recommend_many([(user_id, k, recent_items)])[0]

    def recommend_many(self, requests: list[tuple]) -> list[Recommendation]:
        """``recommend`` of a batch of (user id, k, recent items or None) requests, computed together from one
        version: one online read, one pass of the query tower, one index search per distinct ``k``. Each answer
        equals the one ``recommend`` gives that request alone (the service batches concurrent requests)."""
        b = self._current()  # this batch's one version, whatever is swapped in meanwhile
        ks = [_int(k, "k") for _, k, _ in requests]
        for k in ks:
            if not 1 <= k <= len(b.index):
                raise SchemaError(f"k must be between 1 and the catalogue size {len(b.index)}, got {k}.")
        vectors, seen = self.queries([(u, r) for u, _, r in requests], bundle=b)
        users = [_id(u, self.user_kind, "user_id", text=False) for u, _, _ in requests]
        out: list = [None] * len(requests)
        for i, v in enumerate(vectors):
            if v is None:
                out[i] = Recommendation(users[i], self.popular[:ks[i]].tolist(), self.popular_counts[:ks[i]].tolist(),
                                        b.version, "popularity", 0)
        for k in sorted({ks[i] for i, v in enumerate(vectors) if v is not None}):
            rows = [i for i, v in enumerate(vectors) if v is not None and ks[i] == k]
            ids, scores = b.index.search(np.stack([vectors[i] for i in rows]), k, exclude=[seen[i] for i in rows])
            for j, i in enumerate(rows):
                ok = np.isfinite(scores[j])
                out[i] = Recommendation(users[i], ids[j][ok].tolist(), scores[j][ok].astype(float).tolist(),
                                        b.version, "two-tower", len(seen[i]))
        return out

    def search(self, q, user_id=None, k: int = 10, weight: float | None = None,
               exclude_seen: bool = False) -> SearchResult:
        """The top ``k`` items for the text query ``q``, personalized for ``user_id`` (``recommend.search``):
        text retrieval, then ``z(text) + weight * z(two-tower)`` over the candidates. No user, or one the store
        does not know: text alone. ``exclude_seen``: leave out the user's recent and seen items (search finds
        them by default: people search for what they already have)."""
        from feast_autofeat.models.text import TextError, check_query

        try:
            q = check_query(q, "q")
        except TextError as exc:
            raise SchemaError(str(exc)) from None
        b, side = self._current(), self._text
        if side is None:
            raise SearchUnavailable(
                "search is not available: " + (f"{self.text_decl.name} has no live, materialized version "
                                               f"(`feast-autofeat train/deploy {self.text_decl.name}`, then "
                                               "`feast materialize`)." if self.text_decl is not None else
                                               "the repo declares no text_embedding_view of the items."))
        k = _int(k, "k")
        if not 1 <= k <= len(side.index):
            raise SchemaError(f"k must be between 1 and the number of items with text {len(side.index)}, got {k}.")
        weight = self.search_weight if weight is None else float(weight)
        if not np.isfinite(weight) or weight < 0:
            raise SchemaError(f"weight must be a finite number >= 0, got {weight}.")
        vector, seen = self.query(user_id, bundle=b) if user_id is not None else (None, [])
        exclude = [seen] if exclude_seen and seen else None
        qv = side.encoder.encode_texts([q])
        ids, text = side.index.search(qv, min(max(CANDIDATES, k), len(side.index)), exclude=exclude)
        ok = np.isfinite(text[0])
        ids, text = ids[0][ok], text[0][ok]
        if vector is None:
            fused = fuse(text, None, 0.0)
        else:
            scores, known = user_scores(b.item_ids, b.search_vectors, ids, vector)
            fused = fuse(text, scores, weight, known)
        top = np.argsort(-fused, kind="stable")[:k]
        personal = vector is not None and weight > 0
        return SearchResult(user_id, ids[top].tolist(), fused[top].astype(float).tolist(),
                            "personalized" if personal else "text", b.version if personal else None, side.version)

    def record_feedback(self, events, idempotency_key: str | None = None) -> FeedbackResult:
        """Append interaction events to the event log and push the users' fresh lists online (all or nothing;
        see ``recommend.feedback``): the next ``recommend`` for those users reflects them. A batch sent again
        under the same ``idempotency_key`` is recorded once (``replayed`` in the result)."""
        if self._feedback is None:
            with self._lock:
                if self._feedback is None:
                    self._feedback = FeedbackLog(self.store, self.decl, clock=self.clock)
        return self._feedback.record(events, idempotency_key)

    def healthz(self) -> dict:
        """Status, live version and online-store round trip; an ``AutofeatError`` when the online store holds
        nothing for the log's most active users (it lost its data, or was never materialized): serving would
        quietly answer everyone with the popularity fallback."""
        t = time.perf_counter()
        b = self._current()
        rows = [b.read(user) for user in self.active_users]
        held = sum(any(v is not None and v != [] for k, v in row.items()
                       if k != self.user_key and not k.endswith(TIMESTAMP_POSTFIX)) for row in rows)
        if rows and not held:
            raise AutofeatError(f"the online store holds nothing for the {len(rows)} most active users of the log: "
                                "it lost its data or was never materialized. Rebuild it: `feast-autofeat refresh "
                                "--online-only`.")
        return {"status": "ok", "model_version": b.version, "items": len(b.index), "index": b.index.kind,
                "encoders": b.features.encoders, "online_store_ms": (time.perf_counter() - t) * 1e3}
