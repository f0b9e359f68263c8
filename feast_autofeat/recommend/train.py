"""Fit the declared two-tower recommender from the feature store (``feast-autofeat train <two-tower name>``).

Training rows are positive events of the declared interaction log; each row's query features are what the
declaration's query views and learned embeddings return as of the event (point in time), its ``recent_items``
the user's positives strictly before it. Items are the catalogue with their item views' features and the
declared session embeddings' item vectors. The number of epochs is chosen by early stopping on the same cut
repeated inside the training events (each user's last 20% are validation targets), then the model is refit on
all training events for that many epochs.

**Learned features earn their place** (``gate``): each learned embedding the declaration names is kept only
where it improves the inner validation's Recall@20 beyond its noise: the tuning fit is repeated without it, and
the per-user differences (paired over the same validation users) must average more than ``GATE_Z`` standard
errors above zero. The version records every group's figures and whether it was kept (``metrics.gate``); a
dropped embedding is not read at serving time (``encoders`` lists only the kept ones).

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

from feast_autofeat.errors import AutofeatError, DataError
from feast_autofeat.feast.interactions import ITEM_VECTORS
from feast_autofeat.feast.offline import ITEM, TS, USER
from feast_autofeat.models.interactions import Histories
from feast_autofeat.models.metrics import recall_at_k
from feast_autofeat.models.two_tower import STEERING, TwoTower, TwoTowerConfig
from feast_autofeat.recommend.data import (
    RECENT_FIELD,
    Cut,
    NewItemsCut,
    QueryFeatures,
    attach_history,
    catalogue,
    cold_users_cut,
    groups,
    histories,
    new_items_cut,
    per_user_cut,
    positive_events,
    query_columns,
    query_features,
    query_frame,
)

# the tuning fit's cold users: another hash stream than protocol C's (``cold_users_cut``'s default), whose
# cold users are already absent from the events a two-tower is trained on
INNER_COLD_SALT = 2_000_029
GATE_Z = 1.0  # a learned group stays when its paired validation gain exceeds this many standard errors
INNER_NEW_SHARE = 0.9  # the inner new-items cut: the last 10% of the training events' time
NEW_ITEMS_SEEDS = 2  # fits per configuration on the inner new-items cut, averaged
ITEM_ID_DROPOUT = 0.1  # TwoTowerConfig.item_id_dropout of a two-tower that reads item embeddings


def item_vector_column(name: str) -> str:
    return f"{name}__{ITEM_VECTORS}"


def item_vectors(decl, root, encoders: dict, store=None) -> dict:
    """Learned item vectors for the candidate tower, at their versions in ``encoders``: each declared session
    embedding's (Mult-VAE) output-layer rows, and each stored item embedding's materialized vectors (the latest
    snapshot of every item, read through Feast's offline store)."""
    from feast_autofeat.feast.deployments import view_name
    from feast_autofeat.models.multvae import MultVAE
    from feast_autofeat.recommend.health import latest_vectors

    out = {}
    for name in decl.item_vector_sources:
        version = encoders.get(name)
        if not version:
            continue
        if name in decl.item_embeddings:
            view = view_name(name, version)
            ids, vectors = latest_vectors(store, view, decl.interactions.item_key)
            if not len(ids):
                raise DataError(f"{decl.name} reads the item vectors of {view}, which has none materialized: run "
                                f"`feast materialize` (or `feast-autofeat backfill {view}`) first.")
            out[item_vector_column(name)] = (ids, vectors)
        else:
            vae = MultVAE.load(root, version)
            out[item_vector_column(name)] = (vae.item_ids_, vae.item_vectors())
    return out


def item_vector_refs(decl, encoders: dict) -> dict[str, str]:
    """{``<view>:embedding``: the model's column} of the stored item embeddings at ``encoders``' versions: the
    engine reads them as inputs when it materializes the candidate vectors, so an item added after training is
    placed by its content too."""
    from feast_autofeat.feast.deployments import view_name

    return {f"{view_name(n, encoders[n])}:embedding": item_vector_column(n)
            for n in decl.item_embeddings if encoders.get(n)}


def training_rows(events: pd.DataFrame) -> pd.DataFrame:
    """One row per positive event with the user's positives strictly before it as ``recent_items``."""
    return attach_history(events[[USER, ITEM, TS]], events, strictly_before=True)


def _declared_fill(decl) -> dict[str, float]:
    """The two-tower's declared ``fill`` as {model column or feature name: value}."""
    out = {}
    for k, v in (decl.fill or {}).items():
        out[k.replace(":", "__", 1) if ":" in k else k] = float(v)
    return out


def fill_for(columns, frame: pd.DataFrame, declared: dict) -> dict:
    """Documented imputation of tabular columns: the declared value (by ``view__feature`` or feature name), else
    the training median of a number (e.g. a new user's missing profile); a missing category is its own value."""
    out = {}
    for c in columns:
        feature = c.split("__", 1)[-1]
        if c in declared or feature in declared:
            out[c] = declared.get(c, declared.get(feature))
        elif c in frame and (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])):
            med = frame[c].astype(np.float64).median()
            out[c] = float(med) if np.isfinite(med) else 0.0
        else:
            out[c] = 0.0
    return out


@dataclass
class TrainingSet:
    """Everything a two-tower fit reads, built once: the catalogue (item features + learned item vectors), the
    point-in-time query frame of every training event, and the inner cut used to choose the epoch count."""

    decl: object
    events: pd.DataFrame
    items: pd.DataFrame
    frame: pd.DataFrame
    inner: Cut  # the users in the tuning fit: history (what it trains on) and validation targets
    valid: tuple
    features: QueryFeatures
    root: Path
    cold_valid: tuple | None = None  # users left out of the tuning fit (None: too few to choose from)
    # the inner new-items cut (protocol N inside the training events) and its validation, for gating item
    # embeddings (None: the repo declares none, or too few new items or users to judge them by)
    new_items: NewItemsCut | None = None
    new_valid: tuple | None = None

    @classmethod
    def build(cls, store, decl, train_events: pd.DataFrame, root=None, encoders: dict | None = None,
              cold_share: float = 0.1, cold_known: int = 5, min_cold_users: int = 20,
              min_new_items: int = 10) -> TrainingSet:
        """``encoders``: {embedding: version} the query features use (default: the live versions).
        ``cold_share`` of users (at least ``min_cold_users`` with targets, else none) are left out of the
        tuning fit to choose the cold-user popularity weight. When the declaration's item embeddings are read,
        the inner new-items cut (``INNER_NEW_SHARE``) judges them too, given ``min_new_items`` new items and
        ``min_cold_users`` users with targets among them."""
        root = Path(root) if root else decl.root
        features = query_features(store, decl, encoders)
        items = catalogue(store, decl, item_vectors(decl, root, features.encoders, store),
                          events=train_events)
        item_ids = items[ITEM].to_numpy()
        events = train_events[[USER, ITEM, TS]]
        events = events[events[ITEM].isin(item_ids)].reset_index(drop=True)  # items the catalogue knows
        if events.empty:
            raise DataError(f"{decl.name}: none of the positive events' items is in the catalogue of "
                            f"{len(items)} items; check the item views and the interaction log's item ids.")
        frame = query_frame(store, training_rows(events), features)
        warm, cold = cold_users_cut(events, share=cold_share, known=cold_known, salt=INNER_COLD_SALT)
        if cold.future[USER].nunique() < min_cold_users:
            warm, cold = events, None
        inner = per_user_cut(warm)
        new, new_valid = None, None
        if any(n in features.encoders for n in decl.item_embeddings):
            new = new_items_cut(warm, INNER_NEW_SHARE)
            if len(new.new_items) >= min_new_items and new.cut.future[USER].nunique() >= min_cold_users:
                new_valid = validation(store, new.cut, item_ids, features)
            else:
                new = None
        return cls(decl, events, items, frame, inner, validation(store, inner, item_ids, features), features,
                   root, validation(store, cold, item_ids, features) if cold is not None else None, new, new_valid)

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        return groups(self.decl)

    @property
    def learned(self) -> list[str]:
        """The learned embeddings this training set reads (query side or item vectors)."""
        return [n for n in self.decl.learned if n in self.features.encoders]

    def config(self, groups: tuple | None = None, item_groups: tuple | None = None, history: bool = True,
               **overrides) -> TwoTowerConfig:
        """``groups``: the query feature groups to read (feature view names and learned embedding names; default
        all); ``item_groups``: item view names and session embeddings whose item vectors to read (default all);
        ``history``: pool the request's recent items in the query tower; ``user_ids`` / ``item_ids``
        (overrides): id embeddings. ``groups=(), item_groups=(), history=False``: ids only."""
        all_groups = self.groups
        groups = tuple(all_groups) if groups is None else tuple(groups)
        unknown = [g for g in groups if g not in all_groups]
        if unknown:
            raise AutofeatError(f"unknown feature group(s) {unknown}; {self.decl.name} has {list(all_groups)}.")
        qcols, qvecs = query_columns(self.frame, tuple(p for g in groups for p in all_groups[g]))
        views = [v.projection.name_to_use() for v in self.decl.inputs]
        item_groups = tuple(views) + tuple(self.decl.item_vector_sources) if item_groups is None else item_groups
        item_cols = tuple(c for c in self.items.columns if c.split("__", 1)[0] in item_groups
                          and c.split("__", 1)[0] in views)
        vecs = tuple(item_vector_column(n) for n in self.decl.item_vector_sources
                     if n in item_groups and item_vector_column(n) in self.items)
        declared = _declared_fill(self.decl)
        fill = {**fill_for(qcols, self.frame, declared), **fill_for(item_cols, self.items, declared)}
        # item-id dropout where the declaration gives the items content (item embeddings) to be placed by when
        # new: it costs warm accuracy (ML-100K, evaluate --quick, protocol P: Recall@20 -0.004 with it)
        dropout = {"item_id_dropout": ITEM_ID_DROPOUT} if self.decl.item_embeddings else {}
        params = {**dropout, **self.decl.params, **({"dim": self.decl.dim} if self.decl.dim else {}), **overrides}
        return TwoTowerConfig(query_columns=qcols, query_vectors=qvecs, item_columns=item_cols, item_vectors=vecs,
                              history=RECENT_FIELD if history else None, fill=fill, **params)

    def without(self, config: TwoTowerConfig, name: str) -> TwoTowerConfig:
        """``config`` without the learned embedding ``name`` (its query columns and its item vectors)."""
        prefix = f"{name}__"
        return replace(config, query_columns=tuple(c for c in config.query_columns if not c.startswith(prefix)),
                       query_vectors=tuple(c for c in config.query_vectors if not c.startswith(prefix)),
                       item_vectors=tuple(c for c in config.item_vectors if c != item_vector_column(name)))

    @staticmethod
    def reads(config: TwoTowerConfig, name: str) -> bool:
        """Whether ``config`` reads the learned embedding ``name`` (query side or item vectors)."""
        prefix = f"{name}__"
        return any(c.startswith(prefix) for c in (*config.query_columns, *config.query_vectors,
                                                  *config.item_vectors))

    def fit(self, config: TwoTowerConfig, tune: bool = True, gate: bool = False, progress: bool = True) -> TwoTower:
        """``tune``: choose the epoch count on the inner cut, then refit on every training event. ``gate``: keep
        each learned embedding only where it earns its place on the inner validation (module doc).
        ``config.gan_augment`` > 0 adds GAN-synthesized rows for sparse users to both fits (``recommend.augment``)."""
        if not tune:
            config = replace(config, session_weight=max(config.session_weight, config.min_session_weight),
                             category_weight=max(config.category_weight, config.min_category_weight),
                             popularity_weight=max(config.popularity_weight, config.min_popularity_weight))
            frame, report = self._augmented(self.frame, config)
            model = TwoTower(config).fit(frame, self.items, progress=progress)
            if config.item_item and (config.item_item_weight or config.cold_item_item_weight) \
                    and config.item_item_l2:  # a tuned fit's choice, as is
                model.fit_item_item(self._histories(self.events), config.item_item_l2)
            model.metrics_["gan_augmentation"] = report
            return model
        inner_rows = self.frame.iloc[_row_positions(self.events, self.inner.history)]
        tuned = self._tune(config, inner_rows, progress)
        report = None
        if gate:
            tuned, config, report = self._gate(tuned, config, inner_rows, progress)
        best = tuned.metrics_["best_epoch"]
        # the session and category terms need a history; the popularity term applies to every variant alike
        steering = {} if config.history and config.recent else {"grid": (), "category_grid": ()}
        grids = tuned.choose_steering(self.valid, **steering)
        item_item = tuned.choose_item_item(self._histories(self.inner.history), self.valid)
        if item_item:
            grids["item_item"] = item_item["weight"]
            if tuned.config.item_item_weight:  # popularity again, beside the item-item scores it overlaps
                grids["popularity"] = tuned.choose_steering(self.valid, grid=(), category_grid=())["popularity"]
        if self.cold_valid is not None:
            grids["cold_popularity"] = tuned.choose_cold_popularity(self.cold_valid)
            if item_item:
                grids["cold_item_item"] = tuned.choose_cold_item_item(self.cold_valid)
        chosen = {f"{k}_weight": getattr(tuned.config, f"{k}_weight") for k in STEERING}
        frame, augment = self._augmented(self.frame, config)
        model = TwoTower(config, epochs=best).fit(frame, self.items, progress=progress)
        model.config = replace(model.config, **chosen)
        if model.config.item_item_weight or model.config.cold_item_item_weight:
            model.fit_item_item(self._histories(self.events), tuned.config.item_item_l2)
        model.metrics_.update({"tuned_epochs": best, "inner_valid_recall@20": grids["popularity"][
            chosen["popularity_weight"]], **chosen, **{f"{k}_weight_grid": v for k, v in grids.items()},
            "gan_augmentation": augment, "item_item_l2": tuned.config.item_item_l2,
            "item_item_l2_grid": item_item.get("l2"),
            "inner_cold_users": 0 if self.cold_valid is None else int((self.cold_valid[1].lengths > 0).sum())})
        if report is not None:
            model.metrics_["gate"] = report
        return model

    def _histories(self, events: pd.DataFrame) -> Histories:
        """Users x catalogue positions of ``events`` (the item-item term's training data)."""
        return histories(events, np.unique(events[USER]), self.items[ITEM].to_numpy())

    def _tune(self, config: TwoTowerConfig, inner_rows: pd.DataFrame, progress: bool) -> TwoTower:
        rows, _ = self._augmented(inner_rows, config)
        return TwoTower(config).fit(rows, self.items, valid=self.valid, progress=progress)

    def _gate(self, tuned: TwoTower, config: TwoTowerConfig, inner_rows: pd.DataFrame, progress: bool):
        """Drop the learned embeddings that do not earn their place (module doc); returns (the tuning fit of the
        kept configuration, that configuration, a report per embedding)."""
        from feast_autofeat.evaluation import mean_se

        base = _per_user_recall(tuned, self.valid)
        report, dropped = {}, []
        for name in self.learned:
            if not self.reads(config, name):
                continue
            ablated = self._tune(self.without(config, name), inner_rows, progress)
            diff = mean_se(base - _per_user_recall(ablated, self.valid))
            kept = diff["mean"] > GATE_Z * diff["se"]
            report[name] = {"kept": kept, "gain_recall@20": diff["mean"], "se": diff["se"], "z": GATE_Z,
                            "users": int((self.valid[1].lengths > 0).sum()),
                            "reason": (f"inner-validation Recall@20 gain {diff['mean']:+.4f} "
                                       f"{'>' if kept else '<='} {GATE_Z:g} x SE {diff['se']:.4f} (paired)")}
            if name in self.decl.item_embeddings and self.new_valid is not None:
                # what an item embedding is for: placing items nobody has interacted with yet
                new = self._new_items_gain(config, name, tuned.metrics_["best_epoch"], progress)
                kept = kept or new["mean"] > GATE_Z * new["se"]
                report[name].update(
                    kept=kept, new_items={**new, "items": len(self.new_items.new_items)},
                    reason=report[name]["reason"] + f"; inner new items NDCG@10 gain {new['mean']:+.4f} "
                    f"{'>' if new['mean'] > GATE_Z * new['se'] else '<='} {GATE_Z:g} x SE {new['se']:.4f} "
                    f"(paired, {new['users']} users)")
            if not kept:
                dropped.append((name, ablated))
        if not dropped:
            return tuned, config, report
        for name, _ in dropped:
            config = self.without(config, name)
        # one embedding dropped: its ablation is the kept configuration's tuning fit; several: fit it once more
        tuned = dropped[0][1] if len(dropped) == 1 else self._tune(config, inner_rows, progress)
        return tuned, config, report

    def _new_items_gain(self, config: TwoTowerConfig, name: str, epochs: int, progress: bool,
                        seeds: int = NEW_ITEMS_SEEDS) -> dict:
        """Per-user NDCG@10 among the inner new items (``new_items_ndcg``) of ``config`` minus ``config``
        without ``name``, both fitted on the events before the inner cut for ``epochs`` (the tuned count), each
        averaged over ``seeds`` fits (training noise is not in the paired standard error), as mean and standard
        error over users (paired), with the number of users."""
        from feast_autofeat.evaluation import mean_se

        rows = self.frame.iloc[_row_positions(self.events, self.new_items.train)]
        per_user = []
        for cfg in (config, self.without(config, name)):
            cfg = replace(cfg, epochs=epochs, session_weight=max(cfg.session_weight, cfg.min_session_weight),
                          category_weight=max(cfg.category_weight, cfg.min_category_weight))
            per_user.append(np.mean([new_items_ndcg(TwoTower(replace(cfg, seed=cfg.seed + s)).fit(
                self._augmented(rows, cfg)[0], self.items, progress=progress), self.new_valid,
                self.new_items.new_items) for s in range(seeds)], axis=0))
        return {**mean_se(per_user[0] - per_user[1]), "users": len(per_user[0]), "seeds": seeds}

    def _augmented(self, frame: pd.DataFrame, config: TwoTowerConfig) -> tuple[pd.DataFrame, dict | None]:
        if not config.gan_augment:
            return frame, None
        from feast_autofeat.recommend.augment import augment_rows

        return augment_rows(frame, self.decl, self.features.encoders, self.root, config.gan_augment,
                            config.augment_max_events, seed=config.seed)


def new_items_scores(scores: np.ndarray, item_ids: np.ndarray, new_items: np.ndarray) -> np.ndarray:
    """``scores`` (users x catalogue) with every item but ``new_items`` out of the ranking: protocol N ranks
    the items nobody had interacted with at the cut, among themselves."""
    out = np.full_like(scores, -np.inf)
    keep = np.isin(item_ids, new_items)
    out[:, keep] = scores[:, keep]
    return out


def new_items_ndcg(model: TwoTower, valid: tuple, new_items: np.ndarray) -> np.ndarray:
    """Per-user NDCG@10 among ``new_items`` on ``valid`` (users with targets)."""
    from feast_autofeat.models.metrics import ndcg_at_k

    vq, targets, _ = valid
    scores = new_items_scores(model.score(vq), np.asarray(model.item_ids_), new_items)
    return ndcg_at_k(scores, targets, 10)[targets.lengths > 0]


def _per_user_recall(model: TwoTower, valid: tuple) -> np.ndarray:
    vq, targets, exclude = valid
    return recall_at_k(model.score(vq), targets, 20, exclude=exclude)[targets.lengths > 0]


def validation(store, cut: Cut, item_ids: np.ndarray, features: QueryFeatures):
    """(query frame, targets, history to exclude) of a cut, users in the query frame's order."""
    q = query_frame(store, cut.queries(), features)
    users = q[USER].to_numpy()
    return q, histories(cut.future, users, item_ids), histories(cut.history, users, item_ids)


def _row_positions(events: pd.DataFrame, subset: pd.DataFrame) -> np.ndarray:
    """Positions in ``events`` (reset index) of the rows of ``subset`` (same user, item, time)."""
    key = [USER, ITEM, TS]
    ev = events[key].reset_index(drop=True).assign(_pos=np.arange(len(events)))
    pos = subset[key].merge(ev, on=key, how="left")["_pos"]
    if pos.isna().any():
        raise AutofeatError("a subset row is not among the events.")
    return pos.to_numpy(np.int64)


def train_two_tower(repo, decl, as_of=None, root=None, seed: int = 0, progress: bool = True,
                    encoders: dict | None = None, events: pd.DataFrame | None = None, gate: bool = True,
                    **overrides):
    """``feast-autofeat train <two-tower>``: fit on every positive event up to ``as_of`` (or ``events``) with the
    learned embeddings at ``encoders`` ({embedding: version}; default: the live ones), gate them (module doc),
    save a verified version that records the kept ones (serving reads exactly those). Its ``feature_refs`` name
    the item views and the kept item embeddings' versioned views, so ``feast materialize`` of its view writes its
    candidate vectors from exactly what it was trained on."""
    from feast_autofeat.training import TrainResult

    t0 = time.perf_counter()
    store = repo.store
    root = Path(root) if root else decl.root
    if events is None:
        events = positive_events(store, decl, as_of)
    else:
        events = events[events[TS] <= pd.Timestamp(as_of)] if as_of is not None else events
    if events.empty:
        raise DataError(f"{decl.name}: no positive interactions" + (f" at or before {as_of.isoformat()}" if as_of
                                                                     else "") + ".")
    used = as_of or pd.Timestamp(events[TS].max()).to_pydatetime()
    data = TrainingSet.build(store, decl, events, root, encoders)
    model = data.fit(data.config(seed=seed, **overrides), gate=gate, progress=progress)
    kept = {n: v for n, v in data.features.encoders.items() if data.reads(model.config, n)}
    inter = decl.interactions
    art = model.save(root, extra={
        "declaration": decl.name, "feast_project": store.project, "seed": seed,
        "training_window": {"as_of": used.isoformat()}, "encoders": kept,
        "feature_refs": [*decl.refs, *item_vector_refs(decl, kept)], "item_vector_refs": item_vector_refs(decl, kept),
        "join_key": inter.item_key, "key_kind": inter.item_kind(), "user_key": inter.user_key,
        "user_kind": inter.user_kind(), "interaction_log": inter.describe()})
    rows = {"events": len(data.events), "users": model.metrics_["users"], "items": model.metrics_["items"]}
    notes = [f"{n}: {'kept' if g['kept'] else 'dropped'} ({g['reason']})"
             for n, g in (model.metrics_.get("gate") or {}).items()]
    return TrainResult(name=decl.name, model="two_tower", version=art.version, path=art.path, as_of=used.isoformat(),
                       rows=rows, metrics=model.metrics_, seconds=time.perf_counter() - t0, notes=notes)
