"""Fit the two-tower recommender from the feature store (``feast-autofeat train two-tower``).

Training rows are positive events; each row's query features are what the ``two_tower_query`` service
returns as of the event (point in time), its ``recent_items`` the user's positives strictly before it. Items
are the whole catalogue with their profile and the live Mult-VAE's item vectors. The number of epochs is
chosen by early stopping on the same cut repeated inside the training events (each user's last 20% are
validation targets), then the model is refit on all training events for that many epochs.

The tuning fit also leaves out a share of users entirely (``cold_share``): with their first ``cold_known``
positives as the only history and the rest as targets, they choose how much popularity to add for users the
model has no row for (new users; protocol C repeated inside the training events).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from feast_autofeat.errors import AutofeatError
from feast_autofeat.models.two_tower import TwoTower, TwoTowerConfig
from feast_autofeat.recommend.data import (
    GROUPS,
    RECENT_FIELD,
    Cut,
    QueryFeatures,
    attach_history,
    catalogue,
    cold_users_cut,
    histories,
    per_user_cut,
    positive_events,
    query_columns,
    query_features,
    query_frame,
)

ITEM_MULTVAE = "item_multvae"
# the tuning fit's cold users: another hash stream than protocol C's (``cold_users_cut``'s default), whose
# cold users are already absent from the events a two-tower is trained on
INNER_COLD_SALT = 2_000_029


def live_version(repo, name: str) -> str | None:
    from feast_autofeat.feast.embeddings import Deployments

    entry = Deployments(repo).get(name)
    return entry.live if entry else None


def item_vectors(repo, root, version: str | None = None) -> dict:
    """Learned item vectors for the candidate tower: the session Mult-VAE's output-layer rows (default: the
    live version)."""
    version = version or live_version(repo, "session_multvae")
    if version is None:
        return {}
    from feast_autofeat.models.multvae import MultVAE

    vae = MultVAE.load(root, version)
    return {ITEM_MULTVAE: (vae.item_ids_, vae.item_vectors())}


def training_rows(events: pd.DataFrame) -> pd.DataFrame:
    """One row per positive event with the user's positives strictly before it as ``recent_items``."""
    return attach_history(events[["user_id", "item_id", "event_timestamp"]], events, strictly_before=True)


@dataclass
class TrainingSet:
    """Everything a two-tower fit reads, built once: the catalogue (profile + learned item vectors), the
    point-in-time query frame of every training event, and the inner cut used to choose the epoch count."""

    events: pd.DataFrame
    items: pd.DataFrame
    frame: pd.DataFrame
    inner: Cut  # the users in the tuning fit: history (what it trains on) and validation targets
    valid: tuple
    fill: dict
    features: QueryFeatures
    root: Path
    cold_valid: tuple | None = None  # users left out of the tuning fit (None: too few to choose from)

    @classmethod
    def build(cls, store, repo, train_events: pd.DataFrame, root=None, encoders: dict | None = None,
              cold_share: float = 0.1, cold_known: int = 5, min_cold_users: int = 20) -> TrainingSet:
        """``encoders``: {embedding: version} the query features use (default: the live versions).
        ``cold_share`` of users (at least ``min_cold_users`` with targets, else none) are left out of the
        tuning fit to choose the cold-user popularity weight."""
        from feast_autofeat.artifacts import model_root

        root = model_root(root, default=Path(repo) / "models")
        features = query_features(store, repo, encoders)
        items = catalogue(store, repo, item_vectors(repo, root, features.encoders.get("session_multvae")))
        item_ids = items.item_id.to_numpy()
        events = train_events[["user_id", "item_id", "event_timestamp"]].reset_index(drop=True)
        frame = query_frame(store, training_rows(events), features)
        warm, cold = cold_users_cut(events, share=cold_share, known=cold_known, salt=INNER_COLD_SALT)
        if cold.future.user_id.nunique() < min_cold_users:
            warm, cold = events, None
        inner = per_user_cut(warm)
        item_cols = [c for c in items.columns if c.startswith("item_profile__")]
        return cls(events, items, frame, inner, validation(store, inner, item_ids, features),
                   {**_fill(store, frame.columns), **_profile_fill(frame), **_item_fill(items, item_cols)}, features,
                   Path(root), validation(store, cold, item_ids, features) if cold is not None else None)

    def config(self, groups=tuple(GROUPS), item_groups=("profile", "multvae"), history: bool = True,
               **overrides) -> TwoTowerConfig:
        """``groups``: query feature groups of ``two_tower_query`` (``recommend.data.GROUPS``); ``item_groups``:
        item profile and/or the Mult-VAE's item vectors; ``history``: pool the request's recent items in the
        query tower; ``user_ids`` / ``item_ids`` (overrides): id embeddings.
        ``groups=(), item_groups=(), history=False``: ids only."""
        qcols, qvecs = query_columns(self.frame, groups)
        item_cols = tuple(c for c in self.items.columns if c.startswith("item_profile__")) \
            if "profile" in item_groups else ()
        vecs = (ITEM_MULTVAE,) if "multvae" in item_groups and ITEM_MULTVAE in self.items else ()
        fill = {k: v for k, v in self.fill.items() if k in qcols or k in item_cols}
        return TwoTowerConfig(query_columns=qcols, query_vectors=qvecs, item_columns=item_cols, item_vectors=vecs,
                              history=RECENT_FIELD if history else None, fill=fill, **overrides)

    def fit(self, config: TwoTowerConfig, tune: bool = True, progress: bool = True) -> TwoTower:
        """``tune``: choose the epoch count on the inner cut, then refit on every training event.
        ``config.gan_augment`` > 0 adds GAN-synthesized rows for sparse users to both fits (``recommend.augment``)."""
        if not tune:
            config = replace(config, session_weight=max(config.session_weight, config.min_session_weight),
                             category_weight=max(config.category_weight, config.min_category_weight),
                             popularity_weight=max(config.popularity_weight, config.min_popularity_weight))
            frame, report = self._augmented(self.frame, config)
            model = TwoTower(config).fit(frame, self.items, progress=progress)
            model.metrics_["gan_augmentation"] = report
            return model
        inner_rows, _ = self._augmented(self.frame.iloc[_row_positions(self.events, self.inner.history)], config)
        tuned = TwoTower(config).fit(inner_rows, self.items, valid=self.valid, progress=progress)
        best = tuned.metrics_["best_epoch"]
        # the session and category terms need a history; the popularity term applies to every variant alike
        steering = {} if config.history and config.recent else {"grid": (), "category_grid": ()}
        grids = tuned.choose_steering(self.valid, **steering)
        if self.cold_valid is not None:
            grids["cold_popularity"] = tuned.choose_cold_popularity(self.cold_valid)
        chosen = {f"{k}_weight": getattr(tuned.config, f"{k}_weight")
                  for k in ("session", "category", "popularity", "cold_popularity")}
        frame, report = self._augmented(self.frame, config)
        model = TwoTower(config, epochs=best).fit(frame, self.items, progress=progress)
        model.config = replace(model.config, **chosen)
        model.metrics_.update({"tuned_epochs": best, "inner_valid_recall@20": grids["popularity"][
            chosen["popularity_weight"]], **chosen, **{f"{k}_weight_grid": v for k, v in grids.items()},
            "gan_augmentation": report,
            "inner_cold_users": 0 if self.cold_valid is None else int((self.cold_valid[1].lengths > 0).sum())})
        return model

    def _augmented(self, frame: pd.DataFrame, config: TwoTowerConfig) -> tuple[pd.DataFrame, dict | None]:
        if not config.gan_augment:
            return frame, None
        from feast_autofeat.recommend.augment import augment_rows

        return augment_rows(frame, self.features.encoders, self.root, config.gan_augment,
                            config.augment_max_events, seed=config.seed)


def validation(store, cut: Cut, item_ids: np.ndarray, features: QueryFeatures):
    """(query frame, targets, history to exclude) of a cut, users in the query frame's order."""
    q = query_frame(store, cut.queries(), features)
    users = q.user_id.to_numpy()
    return q, histories(cut.future, users, item_ids), histories(cut.history, users, item_ids)


def _row_positions(events: pd.DataFrame, subset: pd.DataFrame) -> np.ndarray:
    """Positions in ``events`` (reset index) of the rows of ``subset`` (same user, item, time)."""
    key = ["user_id", "item_id", "event_timestamp"]
    ev = events[key].reset_index(drop=True).assign(_pos=np.arange(len(events)))
    pos = subset[key].merge(ev, on=key, how="left")["_pos"]
    if pos.isna().any():
        raise AutofeatError("a subset row is not among the events.")
    return pos.to_numpy(np.int64)


def _fill(store, columns) -> dict:
    """The behaviour views' documented imputation, under the service's full feature names."""
    from feast_autofeat.training import behaviour_fill

    fill = {f"user_behaviour__{k}": v for k, v in behaviour_fill(store).items()}
    return {c: v for c, v in fill.items() if c in columns}


def _profile_fill(frame: pd.DataFrame) -> dict:
    """Documented imputation for users the store does not know (a new user with only a session): a missing
    profile number becomes the training median, a missing category the "unseen" slot."""
    cols = [c for c in frame.columns if c.startswith("user_profile__")]
    return {c: float(frame[c].median()) if pd.api.types.is_numeric_dtype(frame[c]) else 0.0 for c in cols}


def _item_fill(items: pd.DataFrame, columns) -> dict:
    """Documented imputation of item attributes: a missing number (e.g. an unknown release year) becomes the
    catalogue's median."""
    return {c: float(items[c].median()) for c in columns
            if pd.api.types.is_numeric_dtype(items[c]) and items[c].isna().any()}


def train_two_tower(repo, as_of=None, root=None, seed: int = 0, progress: bool = True, yaml: str | None = None,
                    encoders: dict | None = None, **overrides):
    """``feast-autofeat train two-tower``: fit on every positive event up to ``as_of`` with the encoders'
    features (``encoders`` {embedding: version}; default: the live ones), save a verified version that records
    them (serving reads exactly those). Its ``feature_refs`` name the item view, so ``embedding_view(...,
    model="two_tower", inputs=[item_profile])`` materializes its candidate vectors."""
    from feast_autofeat.artifacts import model_root
    from feast_autofeat.training import TrainResult, open_store, parse_as_of

    t0 = time.perf_counter()
    repo = Path(repo)
    store = open_store(repo, yaml)
    as_of = parse_as_of(as_of, repo)
    events = positive_events(store, repo)
    events = events[events.event_timestamp <= pd.Timestamp(as_of)].reset_index(drop=True)
    if events.empty:
        raise AutofeatError(f"no positive interactions at or before {as_of.isoformat()}.")
    data = TrainingSet.build(store, repo, events, root, encoders)
    model = data.fit(data.config(seed=seed, **overrides), progress=progress)
    encoders = data.features.encoders
    item_view = store.get_feature_view("item_profile")
    art = model.save(model_root(root, default=repo / "models"), extra={
        "feast_project": store.project, "seed": seed, "training_window": {"as_of": as_of.isoformat()},
        "encoders": encoders, "feature_refs": [f"item_profile:{f.name}" for f in item_view.features]})
    rows = {"events": len(events), "users": model.metrics_["users"], "items": model.metrics_["items"]}
    return TrainResult(model="two_tower", version=art.version, path=art.path, as_of=as_of.isoformat(), rows=rows,
                       metrics=model.metrics_, seconds=time.perf_counter() - t0)
