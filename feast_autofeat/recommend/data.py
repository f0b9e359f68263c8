"""Recommender data from the feature store: positive events, evaluation splits, point-in-time training sets.

Every feature a recommender reads comes through ``store.get_historical_features`` with the
``two_tower_query`` feature service (user profile, behaviour snapshots, the live learned embeddings and the
session embedding of the row's ``recent_items``), so a training row sees exactly what a request at that moment
would have seen. ``recent_items`` of a row are the user's positive items strictly before its timestamp (most
recent first, at most ``RECENT_ITEMS``), computed in DuckDB from the event log.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from feast_autofeat.datasets import get_spec, load_manifest
from feast_autofeat.errors import AutofeatError
from feast_autofeat.features.snapshots import RECENT_ITEMS  # training's history = serving's (no skew)
from feast_autofeat.models.interactions import Histories

QUERY_SERVICE = "two_tower_query"
RECENT_FIELD = "recent_items"
COLD_SALT = 1_000_003

# the query tower's feature groups, by column prefix of the service's full feature names (for ablations)
GROUPS = {
    "profile": ("user_profile__",),
    "behaviour": ("user_behaviour__",),
    "dae": ("user_dae__",),
    "gan_critic": ("user_gan_critic__",),
    "multvae": ("session_multvae__",),
}
LEARNED = ("dae", "gan_critic", "multvae")
# the learned user views the two-tower reads: (embedding name, model); the first two are stored (backfilled)
ENCODERS = (("user_dae", "dae"), ("user_gan_critic", "gan"), ("session_multvae", "multvae"))


def positive_events(store, repo) -> pd.DataFrame:
    """Positive interactions (the dataset's own definition, e.g. rating >= 4 on MovieLens) read through Feast's
    offline store, one row per (user, item) at its first positive time, ordered by user, time, item."""
    from feast_autofeat.training import interactions_until, parse_as_of

    spec = get_spec(load_manifest(f"{repo}/data").dataset)
    con = duckdb.connect()
    con.register("ev", interactions_until(store, parse_as_of(None, repo)))
    return con.sql(f"""
        SELECT user_id, item_id, min(event_timestamp) AS event_timestamp FROM ev e WHERE {spec.positive}
        GROUP BY user_id, item_id ORDER BY user_id, event_timestamp, item_id""").df()


@dataclass(frozen=True)
class Cut:
    """Per user: ``history`` (everything before the cut) and ``future`` (the targets after it)."""

    history: pd.DataFrame
    future: pd.DataFrame

    def queries(self) -> pd.DataFrame:
        """One query per user with targets: ``user_id``, ``event_timestamp`` = their first target time,
        ``recent_items`` = their history (most recent first)."""
        first = self.future.groupby("user_id", as_index=False)["event_timestamp"].min()
        return attach_history(first, self.history)


def per_user_cut(events: pd.DataFrame, share: float = 0.2, min_events: int = 5) -> Cut:
    """Protocol P: each user's last ``share`` of positives by time (at least one) are targets, the rest history.
    Users with fewer than ``min_events`` positives stay whole in the history (they have nothing to test)."""
    ev = events.sort_values(["user_id", "event_timestamp", "item_id"], ignore_index=True)
    n = ev.groupby("user_id")["item_id"].transform("size").to_numpy()
    rank = ev.groupby("user_id").cumcount().to_numpy()
    n_future = np.where(n >= min_events, np.maximum(1, np.round(share * n)), 0)
    future = rank >= n - n_future
    return Cut(ev[~future].reset_index(drop=True), ev[future].reset_index(drop=True))


def cold_users_cut(events: pd.DataFrame, share: float = 0.1, known: int = 5, seed: int = 0,
                   min_future: int = 1, salt: int = COLD_SALT) -> tuple[pd.DataFrame, Cut]:
    """Protocol C: ``share`` of users (seeded) are held out entirely; of each, only the first ``known``
    positives are known at request time and everything later is a target. Returns (training events of the
    other users, the held-out users' cut)."""
    from feast_autofeat.training import holdout_users

    users = events.user_id.unique()
    # a different hash stream than the encoders' validation hold-out (same share, seed 0): otherwise every
    # validation user of the encoders would be a cold user, absent from their training events
    cold = users[holdout_users(users, share, seed + salt)]
    ev = events.sort_values(["user_id", "event_timestamp", "item_id"], ignore_index=True)
    is_cold = ev.user_id.isin(cold).to_numpy()
    held = ev[is_cold].reset_index(drop=True)
    rank = held.groupby("user_id").cumcount().to_numpy()
    cut = Cut(held[rank < known].reset_index(drop=True), held[rank >= known].reset_index(drop=True))
    enough = cut.future.groupby("user_id").size()
    keep = enough.index[enough >= min_future]
    cut = Cut(cut.history[cut.history.user_id.isin(keep)].reset_index(drop=True),
              cut.future[cut.future.user_id.isin(keep)].reset_index(drop=True))
    return ev[~is_cold].reset_index(drop=True), cut


def attach_history(rows: pd.DataFrame, history: pd.DataFrame, strictly_before: bool = False,
                   limit: int = RECENT_ITEMS) -> pd.DataFrame:
    """``rows`` (user_id, event_timestamp, ...) plus ``recent_items``: the user's items in ``history`` (all of
    them, or only those strictly before the row's time), most recent first, at most ``limit``. DuckDB."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    r = rows.reset_index(drop=True).assign(_row=np.arange(len(rows)))
    con.register("r", r)
    con.register("h", history[["user_id", "item_id", "event_timestamp"]])
    cond = "AND h.event_timestamp < r.event_timestamp" if strictly_before else ""
    lists = con.sql(f"""
        SELECT r._row, list(h.item_id ORDER BY h.event_timestamp DESC, h.item_id DESC) AS items
        FROM r JOIN h ON h.user_id = r.user_id {cond} GROUP BY r._row""").df()
    out = [[] for _ in range(len(r))]
    for row, items in zip(lists._row.to_numpy(), lists["items"]):  # one pass to place lists (no per-row SQL)
        out[row] = [int(i) for i in items[:limit]]
    return r.drop(columns="_row").assign(**{RECENT_FIELD: out})


@dataclass(frozen=True)
class QueryFeatures:
    """The query tower's features pinned to encoder versions: what to read (``refs``, for
    ``get_historical_features`` with full feature names), how the names read map to the model's columns
    (``<embedding>__<feature>``, the same for every version), and the TTL of each column whose view has one.
    A two-tower is trained on one set of encoder versions and served with exactly those, whichever versions are
    live meanwhile.

    ``stored_refs`` are the refs of stored views (serving reads them online in one call); ``session`` is the
    on-demand session embedding (name, model, version, root), which serving computes in-process with the very
    function its on-demand view runs (``runtime.session_embeddings``): Feast's online path drops python-mode
    on-demand outputs under full feature names, and it saves a second online read."""

    encoders: dict
    refs: list[str]
    rename: dict[str, str]
    ttl: dict[str, float]
    stored_refs: list[str]
    session: tuple | None = None

    def column(self, name: str) -> str:
        """The model's column for a full feature name read (``<...>__ts`` timestamp columns follow theirs)."""
        from feast.online_response import TIMESTAMP_POSTFIX

        if name.endswith(TIMESTAMP_POSTFIX) and name[:-len(TIMESTAMP_POSTFIX)] in self.rename:
            return self.rename[name[:-len(TIMESTAMP_POSTFIX)]] + TIMESTAMP_POSTFIX
        return self.rename.get(name, name)

    def session_columns(self, histories: list) -> dict:
        """The session embedding's columns (model names) for a batch of item-id lists."""
        from feast_autofeat.feast.runtime import session_embeddings

        name, model, version, root = self.session
        out = session_embeddings(histories, root=root, model=model, version=version, output=name)
        return {f"{name}__{k}": v for k, v in out.items()}


def query_features(store, repo, encoders: dict | None = None) -> QueryFeatures:
    """The ``two_tower_query`` service's plain views plus the learned ``ENCODERS`` at ``encoders`` ({name:
    version or None}; default: the live versions)."""
    from feast_autofeat.feast.embeddings import MODEL_TAG, ROOT_TAG, Deployments, view_name

    try:
        service = store.get_feature_service(QUERY_SERVICE)
    except Exception as exc:  # Feast's FeatureServiceNotFoundException
        raise AutofeatError(f"feature service {QUERY_SERVICE} is not registered: add it to the feature repo "
                            "(see feature_repo/features.py) and run `feast apply`.") from exc
    if encoders is None:
        dep = Deployments(repo)
        encoders = {name: (dep.get(name).live if dep.get(name) else None) for name, _ in ENCODERS}
    learned = dict(ENCODERS)
    views = [(p.name, p.name_to_use()) for p in service.feature_view_projections if p.name_to_use() not in learned]
    views += [(view_name(name, v), name) for name, v in encoders.items() if v is not None]
    refs, stored, rename, ttl, session = [], [], {}, {}, None
    for view, alias in views:
        try:
            fv = store.get_feature_view(view)
        except Exception:
            try:
                fv = store.get_on_demand_feature_view(view)
            except Exception as exc:
                raise AutofeatError(f"feature view {view} is not registered: deploy that version "
                                    "(`feast-autofeat deploy`) and run `feast apply`.") from exc
            session = (alias, fv.tags[MODEL_TAG], encoders[alias], fv.tags[ROOT_TAG])
        seconds = fv.ttl.total_seconds() if getattr(fv, "ttl", None) else 0.0
        for f in fv.features:
            refs.append(f"{view}:{f.name}")
            if session is None or session[0] != alias:
                stored.append(f"{view}:{f.name}")
            rename[f"{view}__{f.name}"] = f"{alias}__{f.name}"
            if seconds > 0:
                ttl[f"{alias}__{f.name}"] = seconds
    return QueryFeatures(dict(encoders), refs, rename, ttl, stored, session)


def query_frame(store, rows: pd.DataFrame, features: QueryFeatures) -> pd.DataFrame:
    """Point-in-time query features for rows of (user_id, event_timestamp, recent_items[, item_id]), in the
    rows' order, under the model's column names."""
    entity = rows.reset_index(drop=True).assign(_row=np.arange(len(rows)))
    df = store.get_historical_features(entity_df=entity, features=features.refs, full_feature_names=True).to_df()
    df = df.rename(columns=features.rename)
    return df.sort_values("_row", ignore_index=True).drop(columns="_row")  # the join does not keep row order


def query_columns(frame: pd.DataFrame, groups=tuple(GROUPS)) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tabular columns, vector columns) of ``frame`` belonging to ``groups``; version stamps are not features."""
    prefixes = tuple(p for g in groups for p in GROUPS[g])
    cols = [c for c in frame.columns if c.startswith(prefixes) and not c.endswith("__model_version")]
    vectors = tuple(c for c in cols if frame[c].dtype == object and _is_list_column(frame[c]))
    return tuple(c for c in cols if c not in vectors), vectors


def _is_list_column(s: pd.Series) -> bool:
    first = s.dropna()
    return len(first) > 0 and isinstance(first.iloc[0], (list, np.ndarray))


def catalogue(store, repo, item_vectors: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> pd.DataFrame:
    """Every item with its profile (the latest row, read through Feast's offline store), plus learned item
    vectors given as {column: (item ids, matrix)}; items a vector source does not know get a missing value."""
    from feast_autofeat.training import parse_as_of

    view = store.get_feature_view("item_profile")
    src = view.batch_source
    t = store._get_provider().offline_store.pull_latest_from_table_or_query(
        config=store.config, data_source=src, join_key_columns=["item_id"],
        feature_name_columns=[f.name for f in view.features], timestamp_field=src.timestamp_field,
        created_timestamp_column=None, start_date=pd.Timestamp("1970-01-01", tz="UTC").to_pydatetime(),
        end_date=parse_as_of(None, repo)).to_df()
    items = t.drop(columns=[src.timestamp_field]).rename(columns={f.name: f"item_profile__{f.name}"
                                                                  for f in view.features})
    items = items.sort_values("item_id", ignore_index=True)
    for col, (ids, matrix) in (item_vectors or {}).items():
        pos = pd.Index(np.asarray(ids, np.int64)).get_indexer(items.item_id.to_numpy())
        rows = np.flatnonzero(pos >= 0)
        items[col] = pd.Series(list(np.asarray(matrix, np.float32)[pos[rows]]), index=rows, dtype=object).reindex(
            np.arange(len(items)))
    return items


def histories(events: pd.DataFrame, users: np.ndarray, item_ids: np.ndarray) -> Histories:
    """CSR histories of ``users`` (in that order) over the catalogue ``item_ids`` (sorted); items outside the
    catalogue are dropped."""
    users = np.asarray(users, np.int64)
    upos = pd.Index(users).get_indexer(events.user_id.to_numpy())
    ipos = pd.Index(np.asarray(item_ids, np.int64)).get_indexer(events.item_id.to_numpy())
    ok = (upos >= 0) & (ipos >= 0)
    return Histories.from_pairs(upos[ok], ipos[ok], len(users), len(item_ids))
