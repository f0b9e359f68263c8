"""Training sets from the feature store, and ``feast-autofeat train MODEL``.

Only data a model could have seen at ``as_of`` is used:

- tabular encoders (DAE, GAN) train on users' feature vectors as of the moments they interacted, built with
  ``store.get_historical_features`` (point-in-time) from entity rows at or before ``as_of``;
- Mult-VAE trains on interaction histories read through Feast's offline store with ``end_date=as_of``.

Validation holds out whole users (a seeded hash of the user id), so early stopping never sees a training user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from feast_autofeat.artifacts import load_version, model_root
from feast_autofeat.datasets import get_spec, load_manifest
from feast_autofeat.errors import AutofeatError
from feast_autofeat.features.snapshots import WINDOWS

USER_VIEWS = ("user_profile", "user_behaviour")
MODELS = ("dae", "multvae", "gan")


@dataclass
class TrainResult:
    model: str
    version: str
    path: Path
    as_of: str
    rows: dict
    metrics: dict
    seconds: float

    def summary(self) -> str:
        lines = [f"trained {self.model} -> version {self.version} in {self.seconds:.1f}s",
                 f"  saved to    {self.path}", f"  as of       {self.as_of} (no data after it was read)"]
        lines += [f"  {k:<11} {v:,}" if isinstance(v, int) else f"  {k:<11} {v}" for k, v in self.rows.items()]
        for k, v in self.metrics.items():
            if isinstance(v, float):
                lines.append(f"  {k:<22} {v:.4f}")
            elif isinstance(v, int | str):
                lines.append(f"  {k:<22} {v}")
        return "\n".join(lines)


def open_store(repo: str | Path, yaml: str | None = None):
    from feast import FeatureStore

    repo = Path(repo)
    if not (repo / (yaml or "feature_store.yaml")).exists():
        raise AutofeatError(f"{repo / (yaml or 'feature_store.yaml')} not found: pass --repo to a feature repo.")
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / yaml if yaml else None)
    try:
        store.get_feature_view("user_behaviour")
    except Exception as exc:  # Feast raises its own FeatureViewNotFoundException
        raise AutofeatError(f"feature view user_behaviour is not registered in {repo}: run `feast apply` there "
                            "first.") from exc
    return store


def parse_as_of(value: str | datetime | None, repo: str | Path) -> datetime:
    """``as_of`` as an aware UTC datetime; default: the last event of the prepared data."""
    if value is None:
        return datetime.fromisoformat(load_manifest(Path(repo) / "data").time_range[1])
    ts = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def interactions_until(store, as_of: datetime) -> pd.DataFrame:
    """Every interaction at or before ``as_of``, read through Feast's offline store (DuckDB over parquet)."""
    source = store.get_data_source("interactions")
    columns = [c for c in ("event_type", "rating") if c in _source_columns(store, source)]
    job = store._get_provider().offline_store.pull_all_from_table_or_query(
        config=store.config, data_source=source, join_key_columns=["user_id", "item_id"],
        feature_name_columns=columns, timestamp_field="event_timestamp", end_date=as_of)
    df = job.to_df()
    if df.empty:
        raise AutofeatError(f"no interactions at or before {as_of.isoformat()}: pick a later --as-of.")
    return df


def _source_columns(store, source) -> set[str]:
    return {name for name, _ in source.get_table_column_names_and_types(store.config)}


def holdout_users(user_ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean mask: True for users in the validation share, from a seeded hash of the id (stable, no state)."""
    mixed = np.asarray(user_ids, dtype=np.uint64) ^ np.uint64((seed * 0xD6E8FEB86659FD93) % 2**64)
    h = (mixed * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)  # Fibonacci hashing: the high bits mix best
    return (h % np.uint64(10_000)).astype(np.int64) < int(share * 10_000)


def user_feature_refs(store) -> list[str]:
    return [f"{v}:{f.name}" for v in USER_VIEWS for f in store.get_feature_view(v).features]


def behaviour_fill(store) -> dict[str, float]:
    """Documented imputation: a missing behaviour snapshot means no activity in the trailing window, so counts
    are 0 and days-since-last-event is one more than the window; a missing mean rating becomes 0."""
    fill = {}
    for f in store.get_feature_view("user_behaviour").features:
        fill[f.name] = float(max(WINDOWS) + 1) if f.name == "days_since_last_event" else 0.0
    return fill


def user_training_frame(store, as_of: datetime, max_rows: int, seed: int,
                        events: pd.DataFrame | None = None) -> pd.DataFrame:
    """Users' profile + behaviour features as of the moments they interacted (point in time), at most
    ``max_rows`` sampled rows; ``events`` restricts the moments (default: every interaction up to ``as_of``)."""
    events = (interactions_until(store, as_of) if events is None else events)[["user_id", "event_timestamp"]]
    events = events.sort_values(["event_timestamp", "user_id"], kind="stable", ignore_index=True)
    if len(events) > max_rows:
        events = events.sample(max_rows, random_state=seed)
    frame = store.get_historical_features(entity_df=events, features=user_feature_refs(store)).to_df()
    # the offline join does not preserve row order; training must not depend on it (determinism by seed)
    return frame.sort_values(["event_timestamp", "user_id"], kind="stable", ignore_index=True)


def split_frame(df: pd.DataFrame, seed: int, share: float = 0.1) -> tuple[pd.DataFrame, pd.DataFrame]:
    valid = holdout_users(df["user_id"].to_numpy(), share, seed)
    features = df.drop(columns=["user_id", "event_timestamp"])
    return features[~valid].reset_index(drop=True), features[valid].reset_index(drop=True)


def train(model: str, repo: str | Path, as_of=None, root=None, seed: int = 0, max_rows: int = 50_000,
          progress: bool = True, yaml: str | None = None, events: pd.DataFrame | None = None,
          init_from: str | None = None, **overrides) -> TrainResult:
    """Build the training set for ``model`` from the store as of ``as_of``, fit, save a verified version.

    ``events`` (user_id, item_id, event_timestamp), e.g. an evaluation's history part, replaces "every
    interaction up to ``as_of``" as what the model may learn from (Mult-VAE: taken as positives).
    ``init_from``: a previous version to warm-start from (used when its inputs mean the same; the new
    version's metrics say whether it was)."""
    if model not in MODELS:
        raise AutofeatError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}.")
    t0 = time.perf_counter()
    repo = Path(repo)
    store = open_store(repo, yaml)
    as_of = parse_as_of(as_of, repo)
    root = model_root(root, default=repo / "models")
    extra = {"training_window": {"as_of": as_of.isoformat()}, "seed": seed, "feast_project": store.project,
             "dataset": load_manifest(repo / "data").dataset, "warm_start_from": init_from}
    init = load_version(root, model, init_from) if init_from else None  # hash-verified like any load
    if model == "multvae":
        from feast_autofeat.evaluation import strong_generalization_split
        from feast_autofeat.models.multvae import MultVAE

        spec = get_spec(extra["dataset"])
        if events is None:
            ev = interactions_until(store, as_of)
            pos = duckdb.sql(f"SELECT user_id, item_id FROM ev e WHERE {spec.positive}").df()
        else:
            ev = pos = events[["user_id", "item_id"]]
        split = strong_generalization_split(pos.user_id.to_numpy(), pos.item_id.to_numpy(), heldout_share=0.1,
                                            seed=seed)
        fitted = MultVAE(seed=seed, **overrides)
        fitted.init_ = init
        fitted.fit(split.train, split.item_ids, valid=(split.valid_in, split.valid_out), progress=progress)
        rows = {"events": len(ev), "positives": len(pos), **split.describe()}
    else:
        frame = user_training_frame(store, as_of, max_rows, seed, events)
        train_df, valid_df = split_frame(frame, seed)
        if valid_df.empty or train_df.empty:
            raise AutofeatError(f"the {len(frame):,} training rows hold too few users for a 10% validation "
                                "hold-out; train on more events.")
        extra["feature_refs"] = user_feature_refs(store)
        fill = behaviour_fill(store)
        if model == "dae":
            from feast_autofeat.models.dae import DAE

            fitted = DAE(seed=seed, fill=fill, **overrides)
        else:
            from feast_autofeat.models.gan import TabularGAN

            fitted = TabularGAN(seed=seed, fill=fill, **overrides)
        fitted.init_ = init
        fitted.fit(train_df, valid_df, progress=progress)
        rows = {"train_rows": len(train_df), "valid_rows": len(valid_df), "features": train_df.shape[1]}
    extra["rows"] = rows
    art = fitted.save(root, extra=extra)
    return TrainResult(model=model, version=art.version, path=art.path, as_of=as_of.isoformat(), rows=rows,
                       metrics=fitted.metrics_, seconds=time.perf_counter() - t0)
