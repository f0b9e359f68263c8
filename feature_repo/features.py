"""feast-autofeat's bundled feature repository: one user of the public API, like any other Feast repo.

Plain Feast for the entities, sources and views, plus feast-autofeat declarations for what to learn. Column lists,
id types and what counts as a positive come from the prepared data's manifest (`feast-autofeat prepare`), so the
same repo serves the synthetic quickstart data, MovieLens, and your own log.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, FileSource, PushSource
from feast.data_format import ParquetFormat

from feast_autofeat import (
    embedding_view,
    history_view,
    interactions,
    query_embedding_view,
    request_embedding_view,
    session_embedding_view,
    text_embedding_view,
    two_tower,
)
from feast_autofeat.feast.definitions import repo_layout
from feast_autofeat.features.snapshots import SNAPSHOT_TTL

layout = repo_layout(__file__)

# ---- entities
user = Entity(name="user", join_keys=["user_id"], value_type=layout.user_key_type, description="A customer / viewer.")
item = Entity(name="item", join_keys=["item_id"], value_type=layout.item_key_type, description="A product / movie.")

# ---- sources (parquet written by `feast-autofeat prepare`)
interactions_source = FileSource(
    name="interactions", path=layout.event_log(), file_format=ParquetFormat(), timestamp_field="event_timestamp",
    description="The interaction log (prepared events plus appended feedback): user_id, item_id, event_type, "
    "[rating], event_timestamp.",
)
users_source = FileSource(name="users", path=layout.table("users"), timestamp_field="created_timestamp")
items_source = FileSource(name="items", path=layout.table("items"), timestamp_field="created_timestamp")
user_behaviour_source = FileSource(
    name="user_behaviour_snapshots", path=layout.table("user_behaviour"), timestamp_field="event_timestamp",
    description="Daily snapshots computed in DuckDB from events strictly before each snapshot time.",
)
user_recent_items_source = FileSource(
    name="user_recent_items", path=layout.table("user_recent_items"), timestamp_field="event_timestamp",
    description="Each user's latest positive items and seen items, newest first, as prepared.",
)
# feedback (`POST /feedback`, `Recommender.record_feedback`) keeps the lists fresh online through this push source
user_recent_items_push = PushSource(name="user_recent_items_push", batch_source=user_recent_items_source)
item_popularity_source = FileSource(
    name="item_popularity_snapshots", path=layout.table("item_popularity"), timestamp_field="event_timestamp",
)

# ---- feature views (a log without a users or items file has no profile columns: no profile view then)
tags = {"dataset": layout.dataset, "owner": "feast-autofeat"}
user_profile = FeatureView(
    name="user_profile", entities=[user], ttl=timedelta(0), schema=layout.user_profile,
    source=users_source, online=True, tags=tags, description="Static user attributes (demographics).",
) if layout.user_profile else None
item_profile = FeatureView(
    name="item_profile", entities=[item], ttl=timedelta(0), schema=layout.item_profile,
    source=items_source, online=True, tags=tags, description="Static item attributes.",
) if layout.item_profile else None
user_behaviour = FeatureView(
    name="user_behaviour", entities=[user], ttl=SNAPSHOT_TTL, schema=layout.user_behaviour,
    source=user_behaviour_source, online=True, tags=tags,
    description="Trailing 7/30-day counts per event type and category, distinct items, recency. "
    "Missing = no activity in the last 30 days.",
)
item_popularity = FeatureView(
    name="item_popularity", entities=[item], ttl=SNAPSHOT_TTL, schema=layout.item_popularity,
    source=item_popularity_source, online=True, tags=tags,
    description="Trailing 7/30-day counts per event type, distinct users, recency. Missing = no activity.",
)

# ---- what to learn from: the interaction log, and the users' lists that serving and feedback keep fresh
events = interactions(
    interactions_source, user=user, item=item, positive=layout.positive, event_type="event_type",
    rating=layout.rating, event_types=layout.event_types, rating_range=layout.rating_range,
)
user_recent_items = history_view("user_recent_items", interactions=events, source=user_recent_items_push, tags=tags)

# ---- learned embeddings: one view per version deployed in embeddings.json (`feast-autofeat train NAME`, then
# `deploy`), plus a feature service named after the embedding that serves its live version (`promote / rollback`)
user_inputs = [v for v in (user_profile, user_behaviour) if v is not None]
behaviour_fill = layout.behaviour_fill  # missing snapshot = no activity (documented in features/snapshots.py)
user_dae = embedding_view(
    "user_dae", entity=user, model="dae", inputs=user_inputs, dim=64, fill=behaviour_fill, tags=tags,
    description="Denoising-autoencoder bottleneck of the user's profile and behaviour.")
user_gan_critic = embedding_view(
    "user_gan_critic", entity=user, model="gan", inputs=user_inputs, dim=65, fill=behaviour_fill, tags=tags,
    description="GAN critic features (64) and realism score (last) of the user's features.")
session_multvae = session_embedding_view(
    "session_multvae", interactions=events, description="Mult-VAE fold-in of the request's recent_items.")
request_dae = request_embedding_view(
    "request_dae", model="dae", inputs=user_inputs, fill=behaviour_fill,
    description="DAE embedding of raw features sent with the request.")

# ---- search (a log whose items file has text columns, such as the synthetic titles and descriptions): the items'
# text embedded by a pretrained sentence encoder (`pip install 'feast-autofeat[text]'`, then `feast-autofeat train
# item_search` and `deploy`); the recommender searches with it (`Recommender.search`, `GET /search`), and the query
# view embeds a request's `query` string into the same space
item_text = FeatureView(
    name="item_text", entities=[item], ttl=timedelta(0), schema=layout.item_text, source=items_source,
    online=False, tags=tags, description="Item text: titles and descriptions.",
) if layout.item_text else None
item_search = text_embedding_view(
    "item_search", entity=item, inputs=[item_text], tags=tags, description="The items' text, embedded for search.",
) if item_text is not None else None
search_query = query_embedding_view(
    "search_query", text_view=item_search, description="A request's search query, embedded like the items' text.",
) if item_search is not None else None

# ---- the recommender: query tower over the user's views and learned embeddings, candidate tower over the item
# views, the Mult-VAE's item vectors and (where the items have text) their text embedding, which places an item
# nobody has interacted with yet; its candidate vectors are the stored view item_two_tower__<version>
item_two_tower = two_tower(
    "item_two_tower", interactions=events,
    query=[*user_inputs, user_dae, user_gan_critic, session_multvae],
    items=[v for v in (item_profile,) if v is not None] + [session_multvae]
    + ([item_search] if item_search is not None else []),
    history=user_recent_items, fill={f"user_behaviour:{k}": v for k, v in behaviour_fill.items()},
    description="The two-tower recommender's candidate vectors (its item index is built from them).",
)

recommender_features = FeatureService(
    name="recommender_features",
    features=[*user_inputs, *(v for v in (item_profile,) if v is not None), item_popularity],
    description="Point-in-time user and item features for training and serving a recommender.",
)
