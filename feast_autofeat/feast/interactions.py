"""Interaction logs and the two-tower recommender, declared in the user's repo.

::

    from feast_autofeat import history_view, interactions, two_tower

    events = interactions(events_source, user=customer, item=product, positive="event_type <> 'view'")
    customer_history = history_view("customer_history", interactions=events, source=history_push)
    recommender = two_tower("product_two_tower", interactions=events,
                            query=[customer_profile, customer_dae, session_vae],
                            items=[product_profile, session_vae], history=customer_history)

``interactions`` names a Feast data source of events and which of its columns hold the user, the item, the time
(the source's timestamp field), and optionally an event type and a rating; ``positive`` is a SQL predicate over
those columns saying which events count as positives (implicit feedback). History models (Mult-VAE) and the
two-tower read it through Feast's offline store.

``history_view`` is the per-user list view serving reads (recent positive items, their times, items seen) and
feedback pushes to. ``two_tower`` declares the recommender: which feature views and learned embeddings form
the query tower (``query``: keyed by the user), which form the candidate tower (``items``: item views, and a
session embedding whose item vectors join them), where interactions and histories live. Like an embedding it
has versions (``feast-autofeat train <name>`` trains one, ``deploy`` deploys it); each version's candidate
vectors are a stored view ``<name>__<version>`` keyed by the item, materialized by ``AutofeatEngine``.
"""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field, PushSource
from feast.types import Array, Int64, String

from feast_autofeat.feast.embeddings import (
    DeploymentError,
    EmbeddingView,
    SessionEmbedding,
    _caller_module,
    _repo_dir,
    _single_key,
    entity_kind,
    input_refs,
)

HISTORY_FIELDS = ("recent_items", "recent_times", "seen_items")  # the history view's features

ITEM_VECTORS = "item_vectors"  # the column suffix of an item vector source in the two-tower's catalogue


class Interactions:
    """An interaction log: a Feast data source with one row per event (see ``interactions``)."""

    def __init__(self, source, *, user, item, positive: str = "true", event_type: str | None = None,
                 rating: str | None = None, event_types: tuple[str, ...] | None = None,
                 rating_range: tuple[float, float] | None = None, repo=None, depth: int = 1):
        self.source, self.user, self.item = source, user, item
        self.user_key = _single_key(user, f"interactions {source.name}")
        self.item_key = _single_key(item, f"interactions {source.name}")
        if self.user_key == self.item_key:
            raise DeploymentError(f"interactions {source.name}: the user and item entities share the join key "
                                  f"{self.user_key}; they must be different columns.")
        self.timestamp = source.timestamp_field
        if not self.timestamp:
            raise DeploymentError(f"interactions {source.name}: the source has no timestamp_field; set it to the "
                                  "column holding each event's time.")
        self.positive = positive.strip() or "true"
        self.event_type, self.rating = event_type, rating
        self.event_types = tuple(event_types) if event_types is not None else None
        self.rating_range = tuple(rating_range) if rating_range is not None else None
        self.repo_dir = _repo_dir(repo, _caller_module(depth + 1))

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def value_columns(self) -> list[str]:
        """The event columns besides user, item and time that predicates and feedback use."""
        return [c for c in (self.event_type, self.rating) if c]

    def user_kind(self) -> str:
        return entity_kind(self.user, [self.source], self.repo_dir)

    def item_kind(self) -> str:
        return entity_kind(self.item, [self.source], self.repo_dir)

    def describe(self) -> dict:
        """What a model version records about the log it learned from."""
        return {"source": self.name, "user_key": self.user_key, "item_key": self.item_key,
                "timestamp": self.timestamp, "positive": self.positive, "item_kind": self.item_kind(),
                "user_kind": self.user_kind()}


def interactions(source, *, user, item, positive: str = "true", event_type: str | None = None,
                 rating: str | None = None, event_types=None, rating_range=None) -> Interactions:
    """Declare an interaction log: ``source`` (a Feast data source, e.g. a ``FileSource`` over parquet) whose
    rows are events; ``user`` / ``item``: the entities whose join keys are its user and item columns (the time is
    the source's ``timestamp_field``). ``positive``: a SQL predicate over the row's columns, e.g.
    ``"rating >= 4"`` or ``"event_type IN ('click', 'purchase')"`` (default: every event).
    ``event_type`` / ``rating``: those columns' names, when the log has them; ``event_types`` /
    ``rating_range``: the values feedback may send (default: not checked)."""
    return Interactions(source, user=user, item=item, positive=positive, event_type=event_type, rating=rating,
                        event_types=event_types, rating_range=rating_range, depth=1)


def history_view(name: str, *, interactions: Interactions, source, ttl: timedelta = timedelta(0),
                 description: str = "", tags: dict | None = None) -> FeatureView:
    """The per-user list view a recommender serves from and feedback updates: ``recent_items`` (the user's latest
    positive items, newest first), ``recent_times`` (when each was a positive, epoch microseconds),
    ``seen_items`` (items of any event, newest first: never recommended again). ``source``: a ``PushSource``
    (feedback pushes fresh lists through it) over a batch source holding the lists (``feast-autofeat prepare``
    writes it from the log)."""
    if not isinstance(source, PushSource):
        raise DeploymentError(f"history view {name}: source must be a PushSource (feedback pushes to it), got "
                              f"{type(source).__name__}.")
    item = String if interactions.item_kind() == "string" else Int64  # integer ids: Int64 lists (Int32 keys too)
    schema = [Field(name="recent_items", dtype=Array(item)), Field(name="recent_times", dtype=Array(Int64)),
              Field(name="seen_items", dtype=Array(item))]
    return FeatureView(name=name, entities=[interactions.user], ttl=ttl, online=True, schema=schema, source=source,
                       tags={**(tags or {}), "autofeat.kind": "history"},
                       description=description or "The user's latest positive items (newest first, with their "
                       "epoch-microsecond times), and the latest items of any event: never recommended again.")


class TwoTowerModel(EmbeddingView):
    """The two-tower recommender of a repo (see ``two_tower``). Its versions' candidate vectors are a stored
    embedding of the item entity."""

    kind = "two_tower"
    models = ("two_tower",)

    def __init__(self, name: str, *, interactions: Interactions, query: list, items: list, history=None,
                 dim: int | None = None, fill: dict | None = None, params: dict | None = None,
                 description: str = "", tags: dict | None = None, repo=None, data_dir=None, root=None,
                 depth: int = 1):
        if not isinstance(interactions, Interactions):
            raise DeploymentError(f"{name}: interactions must be declared with feast_autofeat.interactions(...).")
        item_views = [v for v in items if isinstance(v, FeatureView)]
        super().__init__(name, entity=interactions.item, model="two_tower", inputs=item_views, dim=dim, repo=repo,
                         data_dir=data_dir, root=root, fill=fill, params=params, description=description,
                         tags=tags, depth=depth + 1, finish=False)
        self.interactions, self.history = interactions, history
        self.query_views = [v for v in query if isinstance(v, FeatureView)]
        self.learned = {}  # embedding name -> declaration (query side, and session item vectors)
        for obj in [*query, *items]:
            if isinstance(obj, FeatureView):
                continue
            if not isinstance(obj, (EmbeddingView, SessionEmbedding)) or isinstance(obj, TwoTowerModel):
                raise DeploymentError(f"{name}: query and items hold feature views and embeddings "
                                      "(embedding_view / session_embedding_view), not "
                                      f"{type(obj).__name__}.")
            self.learned[obj.name] = obj
        # learned item vectors of the candidate tower: a session embedding's Mult-VAE item rows, and stored
        # embeddings of the item entity (a text_embedding_view of the items' titles, an embedding_view of them),
        # read from their materialized vectors; they let an item without interactions be placed by its content
        self.item_vector_sources = [o.name for o in items if isinstance(o, SessionEmbedding)]
        self.item_embeddings = [o.name for o in items if isinstance(o, EmbeddingView)]
        for n in self.item_embeddings:
            d = self.learned[n]
            if d.entity.name != interactions.item.name:
                raise DeploymentError(f"{name}: item embedding {n} embeds {d.entity.name}, not the item entity "
                                      f"{interactions.item.name}; list it under query= if it embeds users.")
        self.item_vector_sources += self.item_embeddings
        self.query_learned = [o.name for o in query if not isinstance(o, FeatureView)]
        user = interactions.user.name
        for v in self.query_views:
            if list(v.entities) != [user]:
                raise DeploymentError(f"{name}: query view {v.name} is keyed by {list(v.entities)}, not by the "
                                      f"user entity {user} alone.")
        for n in self.query_learned:
            d = self.learned[n]
            if isinstance(d, EmbeddingView) and d.entity.name != user:
                raise DeploymentError(f"{name}: query embedding {n} embeds {d.entity.name}, not the user entity "
                                      f"{user}.")
        if history is not None and (not isinstance(history, FeatureView) or list(history.entities) != [user]):
            raise DeploymentError(f"{name}: history must be a history_view(...) keyed by {user}.")
        self._finish(depth + 1)

    def check_version(self, version: str, config: dict) -> None:
        """As an embedding view's, the item views' refs; besides them a version reads the materialized vectors of
        item embeddings (``item_vector_refs``), which the declaration's items must still list."""
        vectors = dict(config.get("item_vector_refs") or {})
        for column in vectors.values():
            source = column.removesuffix(f"__{ITEM_VECTORS}")
            if source not in self.item_embeddings:
                raise DeploymentError(f"{self.name}: version {version} reads the item vectors of {source}, which "
                                      f"the declaration's items do not list; add it back, or train a version "
                                      f"without it (`feast-autofeat train {self.name}`).")
        refs = [r for r in config.get("feature_refs") or [] if r not in vectors]
        super().check_version(version, {**config, "feature_refs": refs})

    @property
    def query_refs(self) -> list[str]:
        return input_refs(self.query_views)

    @property
    def history_name(self) -> str | None:
        return self.history.name if self.history is not None else None


def two_tower(name: str, *, interactions: Interactions, query: list, items: list, history=None,
              dim: int | None = None, fill: dict | None = None, params: dict | None = None, description: str = "",
              tags: dict | None = None, repo=None, data_dir=None, root=None) -> TwoTowerModel:
    """Declare the two-tower recommender: ``interactions`` (its training events), ``query`` (feature views keyed
    by the user and learned user embeddings: stored ones and a session embedding), ``items`` (item feature views,
    a session embedding whose Mult-VAE item vectors join the candidate tower, and stored embeddings of the item
    entity such as a ``text_embedding_view`` of the items' text: an item nobody has interacted with yet is then
    placed by its content, not only by its profile columns), ``history`` (a
    ``history_view``, which serving and feedback need). ``name`` is also the stored view of each version's
    candidate vectors. ``fill``: documented values for missing tabular features, {``view:feature`` or feature:
    value} (default: the training median; a missing category is its own value); ``params``: ``TwoTowerConfig``
    overrides (``epochs``, ``gan_augment``, ...)."""
    return TwoTowerModel(name, interactions=interactions, query=query, items=items, history=history, dim=dim,
                         fill=fill, params=params, description=description, tags=tags, repo=repo, data_dir=data_dir,
                         root=root, depth=1)
