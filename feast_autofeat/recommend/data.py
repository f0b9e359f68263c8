"""Recommender data from the feature store: positive events, evaluation splits, point-in-time training sets.

Everything comes from the repo's ``two_tower(...)`` declaration: its interaction log (positives by its
``positive`` predicate), its query tower's feature views and learned embeddings (read through
``store.get_historical_features``, the learned ones at pinned versions, so a training row sees exactly what a
request at that moment would have seen), its item views. ``recent_items`` of a row are the user's positive items
strictly before its timestamp (most recent first, at most ``RECENT_ITEMS``), computed in DuckDB from the log.

Frames use feast-autofeat's own column names (``user_id``, ``item_id``, ``event_timestamp``; features as
``<view or embedding>__<feature>``) whatever the repo calls its join keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from feast_autofeat.errors import AutofeatError
from feast_autofeat.feast.offline import ITEM, TS, USER, latest_rows, read_events, registered_view
from feast_autofeat.features.snapshots import RECENT_ITEMS  # training's history = serving's (no skew)
from feast_autofeat.models.interactions import Histories
from feast_autofeat.splits import holdout_users

RECENT_FIELD = "recent_items"
COLD_SALT = 1_000_003


def positive_events(store, decl, as_of=None) -> pd.DataFrame:
    """The declared log's positives, one row per (user, item) at its first positive time, ordered by user, time,
    item (read through Feast's offline store)."""
    from feast_autofeat.feast.offline import positive_events as positives

    return positives(store, decl.interactions, as_of)


def groups(decl) -> dict[str, tuple[str, ...]]:
    """The query tower's feature groups by column prefix (for ablations and gating): one per query feature view,
    one per learned embedding."""
    out = {v.projection.name_to_use(): (f"{v.projection.name_to_use()}__",) for v in decl.query_views}
    out.update({name: (f"{name}__",) for name in decl.query_learned})
    return out


@dataclass(frozen=True)
class Cut:
    """Per user: ``history`` (everything before the cut) and ``future`` (the targets after it)."""

    history: pd.DataFrame
    future: pd.DataFrame

    def queries(self) -> pd.DataFrame:
        """One query per user with targets: ``user_id``, ``event_timestamp`` = their first target time,
        ``recent_items`` = their history (most recent first)."""
        first = self.future.groupby(USER, as_index=False)[TS].min()
        return attach_history(first, self.history)


def per_user_cut(events: pd.DataFrame, share: float = 0.2, min_events: int = 5) -> Cut:
    """Protocol P: each user's last ``share`` of positives by time (at least one) are targets, the rest history.
    Users with fewer than ``min_events`` positives stay whole in the history (they have nothing to test)."""
    ev = events.sort_values([USER, TS, ITEM], ignore_index=True)
    n = ev.groupby(USER)[ITEM].transform("size").to_numpy()
    rank = ev.groupby(USER).cumcount().to_numpy()
    n_future = np.where(n >= min_events, np.maximum(1, np.round(share * n)), 0)
    future = rank >= n - n_future
    return Cut(ev[~future].reset_index(drop=True), ev[future].reset_index(drop=True))


def cold_users_cut(events: pd.DataFrame, share: float = 0.1, known: int = 5, seed: int = 0,
                   min_future: int = 1, salt: int = COLD_SALT) -> tuple[pd.DataFrame, Cut]:
    """Protocol C: ``share`` of users (seeded) are held out entirely; of each, only the first ``known``
    positives are known at request time and everything later is a target. Returns (training events of the
    other users, the held-out users' cut)."""
    users = events[USER].unique()
    # a different hash stream than the encoders' validation hold-out (same share, seed 0): otherwise every
    # validation user of the encoders would be a cold user, absent from their training events
    cold = users[holdout_users(users, share, seed + salt)]
    ev = events.sort_values([USER, TS, ITEM], ignore_index=True)
    is_cold = ev[USER].isin(cold).to_numpy()
    held = ev[is_cold].reset_index(drop=True)
    rank = held.groupby(USER).cumcount().to_numpy()
    cut = Cut(held[rank < known].reset_index(drop=True), held[rank >= known].reset_index(drop=True))
    enough = cut.future.groupby(USER).size()
    keep = enough.index[enough >= min_future]
    cut = Cut(cut.history[cut.history[USER].isin(keep)].reset_index(drop=True),
              cut.future[cut.future[USER].isin(keep)].reset_index(drop=True))
    return ev[~is_cold].reset_index(drop=True), cut


@dataclass(frozen=True)
class NewItemsCut:
    """Protocol N: ``train`` (every positive before the cut time ``at``); ``cut``: test users' history (their
    positives before ``at``) and targets (their positives after it on ``new_items``, the items whose first
    positive is at or after ``at``: no model trained on ``train`` has seen them)."""

    at: pd.Timestamp
    train: pd.DataFrame
    cut: Cut
    new_items: np.ndarray


def new_items_cut(events: pd.DataFrame, train_share: float = 0.8) -> NewItemsCut:
    """The global temporal cut at the ``train_share`` quantile of positive times; test users: those with a
    positive on each side, one of them after the cut on a new item."""
    ev = events.sort_values([USER, TS, ITEM], ignore_index=True)
    at = ev[TS].sort_values(ignore_index=True).iloc[int(train_share * (len(ev) - 1))]
    before = ev[TS] < at
    train = ev[before].reset_index(drop=True)
    first = ev.groupby(ITEM)[TS].min()
    new = np.sort(first.index[first >= at].to_numpy())
    future = ev[~before & ev[ITEM].isin(new)]
    users = np.intersect1d(train[USER].unique(), future[USER].unique())
    cut = Cut(train[train[USER].isin(users)].reset_index(drop=True),
              future[future[USER].isin(users)].reset_index(drop=True))
    return NewItemsCut(at, train, cut, new)


def attach_history(rows: pd.DataFrame, history: pd.DataFrame, strictly_before: bool = False,
                   limit: int = RECENT_ITEMS) -> pd.DataFrame:
    """``rows`` (user_id, event_timestamp, ...) plus ``recent_items``: the user's items in ``history`` (all of
    them, or only those strictly before the row's time), most recent first, at most ``limit``. DuckDB."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    r = rows.reset_index(drop=True).assign(_row=np.arange(len(rows)))
    con.register("r", r)
    con.register("h", history[[USER, ITEM, TS]])
    cond = f"AND h.{TS} < r.{TS}" if strictly_before else ""
    lists = con.sql(f"""
        SELECT r._row, list(h.{ITEM} ORDER BY h.{TS} DESC, h.{ITEM} DESC)[1:{int(limit)}] AS items
        FROM r JOIN h ON h.{USER} = r.{USER} {cond} GROUP BY r._row""").df()
    out = [[] for _ in range(len(r))]
    for row, items in zip(lists._row.to_numpy(), lists["items"]):  # one pass to place lists (no per-row SQL)
        out[row] = items.tolist() if isinstance(items, np.ndarray) else list(items)
    return r.drop(columns="_row").assign(**{RECENT_FIELD: out})


@dataclass(frozen=True)
class QueryFeatures:
    """The query tower's features pinned to encoder versions: what to read (``refs``, for
    ``get_historical_features`` with full feature names), how the names read map to the model's columns
    (``<view or embedding>__<feature>``, the same for every version), and the TTL of each column whose view has
    one. A two-tower is trained on one set of encoder versions and served with exactly those, whichever versions
    are live meanwhile.

    ``stored_refs`` are the refs of stored views (serving reads them online in one call); ``session`` is the
    on-demand session embedding (name, model, version, root, request field), which serving computes in-process
    with the very function its on-demand view runs (``runtime.session_embeddings``): Feast's online path drops
    python-mode on-demand outputs under full feature names, and it saves a second online read. ``user_key``: the
    repo's join key of the user entity."""

    encoders: dict
    refs: list[str]
    rename: dict[str, str]
    ttl: dict[str, float]
    stored_refs: list[str]
    session: tuple | None = None
    user_key: str = USER

    def column(self, name: str) -> str:
        """The model's column for a full feature name read (``<...>__ts`` timestamp columns follow theirs)."""
        from feast.online_response import TIMESTAMP_POSTFIX

        if name.endswith(TIMESTAMP_POSTFIX) and name[:-len(TIMESTAMP_POSTFIX)] in self.rename:
            return self.rename[name[:-len(TIMESTAMP_POSTFIX)]] + TIMESTAMP_POSTFIX
        return self.rename.get(name, name)

    def session_columns(self, histories: list) -> dict:
        """The session embedding's columns (model names) for a batch of item-id lists."""
        from feast_autofeat.feast.runtime import session_embeddings

        name, model, version, root, _ = self.session
        out = session_embeddings(histories, root=root, model=model, version=version, output=name)
        return {f"{name}__{k}": v for k, v in out.items()}


def live_encoders(decl) -> dict:
    """{learned embedding the two-tower reads: its live version (None: not deployed)}."""
    from feast_autofeat.feast.deployments import Deployments

    dep = Deployments(decl.repo_dir)
    return {name: dep.live(name) for name in decl.learned}


def query_features(store, decl, encoders: dict | None = None) -> QueryFeatures:
    """The two-tower's query views plus its learned embeddings at ``encoders`` ({name: version or None};
    default: the live versions). Embeddings left out of ``encoders`` (or None) are not read."""
    from feast_autofeat.feast.deployments import view_name
    from feast_autofeat.feast.embeddings import MODEL_TAG, ROOT_TAG

    encoders = live_encoders(decl) if encoders is None else dict(encoders)
    views = [(registered_view(store, v.name, f"query view of {decl.name}:"), v.projection) for v in
             decl.query_views]
    refs, stored, rename, ttl, session = [], [], {}, {}, None

    def add(fv, alias: str, features, on_demand: bool = False) -> None:
        seconds = fv.ttl.total_seconds() if getattr(fv, "ttl", None) else 0.0
        for f in features:
            refs.append(f"{fv.name}:{f}")
            if not on_demand:
                stored.append(f"{fv.name}:{f}")
            rename[f"{fv.name}__{f}"] = f"{alias}__{f}"
            if seconds > 0:
                ttl[f"{alias}__{f}"] = seconds

    for fv, proj in views:
        add(fv, proj.name_to_use(), [f.name for f in (proj.features or fv.features)])
    for name in decl.query_learned:
        version = encoders.get(name)
        if version is None:
            continue
        view = view_name(name, version)
        learned = decl.learned[name]
        if learned.kind == "session":
            try:
                fv = store.get_on_demand_feature_view(view)
            except Exception as exc:
                raise AutofeatError(f"on-demand view {view} is not registered: deploy that version of {name} "
                                    "(`feast-autofeat deploy`) and run `feast apply`.") from exc
            session = (name, fv.tags[MODEL_TAG], version, fv.tags[ROOT_TAG], learned.field)
            add(fv, name, [f.name for f in fv.features], on_demand=True)
        else:
            fv = registered_view(store, view, f"embedding view (deploy version {version} of {name}):")
            add(fv, name, [f.name for f in fv.features])
    user_key = decl.interactions.user_key
    return QueryFeatures({k: v for k, v in encoders.items() if v is not None}, refs, rename, ttl, stored, session,
                         user_key)


def query_frame(store, rows: pd.DataFrame, features: QueryFeatures) -> pd.DataFrame:
    """Point-in-time query features for rows of (user_id, event_timestamp, recent_items[, item_id]), in the
    rows' order, under the model's column names."""
    entity = rows.reset_index(drop=True).assign(_row=np.arange(len(rows))).rename(columns={USER: features.user_key})
    if features.session is not None and features.session[4] != RECENT_FIELD:  # the session view's request field
        entity[features.session[4]] = entity[RECENT_FIELD]
    if not features.refs:  # ids only: nothing to read from the store
        return entity.rename(columns={features.user_key: USER}).drop(columns="_row")
    df = store.get_historical_features(entity_df=entity, features=features.refs, full_feature_names=True).to_df()
    df = df.rename(columns={**features.rename, features.user_key: USER})
    if features.session is not None and features.session[4] != RECENT_FIELD:
        df = df.drop(columns=features.session[4])
    return df.sort_values("_row", ignore_index=True).drop(columns="_row")  # the join does not keep row order


def query_columns(frame: pd.DataFrame, prefixes: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tabular columns, vector columns) of ``frame`` with one of ``prefixes``; version stamps are not features."""
    cols = [c for c in frame.columns if c.startswith(prefixes) and not c.endswith("__model_version")] \
        if prefixes else []
    vectors = tuple(c for c in cols if frame[c].dtype == object and _is_list_column(frame[c]))
    return tuple(c for c in cols if c not in vectors), vectors


def _is_list_column(s: pd.Series) -> bool:
    first = s.dropna()
    return len(first) > 0 and isinstance(first.iloc[0], (list, np.ndarray))


def catalogue(store, decl, item_vectors: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
              events: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every item with its features (each item view's latest row, read through Feast's offline store) as
    ``item_id`` plus ``<view>__<feature>`` columns, plus learned item vectors given as {column: (item ids,
    matrix)}; items a vector source does not know get a missing value. Without item views the catalogue is the
    items of the interaction log (``events``, default: read)."""
    key = decl.interactions.item_key
    items = None
    for v in decl.inputs:
        fv = registered_view(store, v.name, f"item view of {decl.name}:")
        features = [f.name for f in (v.projection.features or fv.features)]
        t = latest_rows(store, fv, key, features).rename(
            columns={key: ITEM, **{f: f"{v.projection.name_to_use()}__{f}" for f in features}})
        items = t if items is None else items.merge(t, on=ITEM, how="outer")
    if items is None:
        ev = read_events(store, decl.interactions) if events is None else events
        items = pd.DataFrame({ITEM: np.unique(ev[ITEM].to_numpy())})
    items = items.sort_values(ITEM, ignore_index=True)
    for col, (ids, matrix) in (item_vectors or {}).items():
        pos = pd.Index(np.asarray(ids)).get_indexer(items[ITEM].to_numpy())
        rows = np.flatnonzero(pos >= 0)
        items[col] = pd.Series(list(np.asarray(matrix, np.float32)[pos[rows]]), index=rows, dtype=object).reindex(
            np.arange(len(items)))
    return items


def histories(events: pd.DataFrame, users: np.ndarray, item_ids: np.ndarray) -> Histories:
    """CSR histories of ``users`` (in that order) over the catalogue ``item_ids`` (sorted); items outside the
    catalogue are dropped."""
    upos = pd.Index(np.asarray(users)).get_indexer(events[USER].to_numpy())
    ipos = pd.Index(np.asarray(item_ids)).get_indexer(events[ITEM].to_numpy())
    ok = (upos >= 0) & (ipos >= 0)
    return Histories.from_pairs(upos[ok], ipos[ok], len(users), len(item_ids))
