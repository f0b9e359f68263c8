"""feast-autofeat's feature repository: entities, sources, feature views and the recommender's service.

Plain Feast. Column lists come from the prepared data's manifest (`feast-autofeat prepare`), so the same
repo serves the synthetic quickstart data and MovieLens.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Int64

from feast_autofeat.feast.definitions import repo_layout
from feast_autofeat.feast.embeddings import embedding_view, request_embedding_view, session_embedding_view
from feast_autofeat.features.snapshots import RECENT_FIELDS, SNAPSHOT_TTL

layout = repo_layout(__file__)

# ---- entities
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A customer / viewer.")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A product / movie.")

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

# ---- feature views
tags = {"dataset": layout.dataset, "owner": "feast-autofeat"}
user_profile = FeatureView(
    name="user_profile", entities=[user], ttl=timedelta(0), schema=layout.user_profile,
    source=users_source, online=True, tags=tags, description="Static user attributes (demographics).",
)
item_profile = FeatureView(
    name="item_profile", entities=[item], ttl=timedelta(0), schema=layout.item_profile,
    source=items_source, online=True, tags=tags, description="Static item attributes.",
)
user_behaviour = FeatureView(
    name="user_behaviour", entities=[user], ttl=SNAPSHOT_TTL, schema=layout.user_behaviour,
    source=user_behaviour_source, online=True, tags=tags,
    description="Trailing 7/30-day counts per event type and category, distinct items, recency. "
    "Missing = no activity in the last 30 days.",
)
user_recent_items = FeatureView(
    name="user_recent_items", entities=[user], ttl=timedelta(0), online=True, tags=tags,
    schema=[Field(name=name, dtype=Array(Int64)) for name, _ in RECENT_FIELDS], source=user_recent_items_push,
    description="The user's latest positive items (newest first, with their epoch-microsecond times): serving's "
    "history for the session embedding; and the latest items of any event: never recommended again.",
)
item_popularity = FeatureView(
    name="item_popularity", entities=[item], ttl=SNAPSHOT_TTL, schema=layout.item_popularity,
    source=item_popularity_source, online=True, tags=tags,
    description="Trailing 7/30-day counts per event type, distinct users, recency. Missing = no activity.",
)

# ---- learned embeddings: one view per version deployed in embeddings.json (`feast-autofeat deploy`), plus a
# feature service named after the embedding that serves its live version (`feast-autofeat promote / rollback`)
user_inputs = [user_profile, user_behaviour]
learned = [
    embedding_view("user_dae", entity=user, model="dae", inputs=user_inputs, dim=64, repo=__file__,
                   data_dir=layout.data_dir, tags=tags,
                   description="Denoising-autoencoder bottleneck of the user's profile and behaviour."),
    embedding_view("user_gan_critic", entity=user, model="gan", inputs=user_inputs, dim=65, repo=__file__,
                   data_dir=layout.data_dir, tags=tags,
                   description="GAN critic features (64) and realism score (last) of the user's features."),
    session_embedding_view("session_multvae", model="multvae", repo=__file__,
                           description="Mult-VAE fold-in of the request's recent_items."),
    request_embedding_view("request_dae", model="dae", repo=__file__,
                           description="DAE embedding of raw features sent with the request."),
    embedding_view("item_two_tower", entity=item, model="two_tower", inputs=[item_profile], dim=64, repo=__file__,
                   data_dir=layout.data_dir, tags=tags,
                   description="The two-tower recommender's candidate vectors (its item index is built from them)."),
]
for declaration in learned:
    globals().update(declaration.feast_objects())

# ---- what a recommender's training set reads (entity_df: user_id, item_id, event_timestamp)
# the two-tower's query side: what is known about a user at request time (the session embedding reads the
# request's recent_items); learned views appear once deployed and live
two_tower_query = FeatureService(
    name="two_tower_query",
    features=[user_profile, user_behaviour,
              *[d.live_view for d in learned
                if d.name in ("user_dae", "user_gan_critic", "session_multvae") and d.live_view is not None]],
    description="Point-in-time query features of the two-tower recommender (user_id, recent_items).",
)
recommender_features = FeatureService(
    name="recommender_features",
    features=[user_profile, user_behaviour, item_profile, item_popularity],
    description="Point-in-time user and item features for training and serving a recommender.",
)
