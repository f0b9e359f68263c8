"""Evaluation protocols shared by every recommender (one harness, one split, all models).

Strong generalization (Liang et al. 2018): users are split into train / validation / test; models train on
the train users only; each held-out user's items are split at random into a fold-in part (80%) given to the
model as history and a target part (20%) it must rank, over the full catalogue, history excluded.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from feast_autofeat.models.interactions import Histories
from feast_autofeat.models.metrics import ndcg_at_k, recall_at_k
from feast_autofeat.splits import StrongSplit, strong_generalization_split  # noqa: F401 - re-exported

METRICS = (("recall@20", recall_at_k, 20), ("recall@50", recall_at_k, 50), ("ndcg@100", ndcg_at_k, 100))


def per_user(scores: np.ndarray, fold_in: Histories, targets: Histories, metrics=METRICS) -> dict:
    """{metric: its value for each user with at least one target}; history excluded. ``metrics``: (name,
    function, k) triples."""
    has = targets.lengths > 0
    return {name: fn(scores, targets, k, exclude=fold_in)[has] for name, fn, k in metrics}


def mean_se(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0}


def summarize(values: dict) -> dict:
    """``per_user``'s vectors as {metric: {mean, se}, users}."""
    out = {name: mean_se(v) for name, v in values.items()}
    out["users"] = len(next(iter(values.values()))) if values else 0
    return out


def evaluate(scores: np.ndarray, fold_in: Histories, targets: Histories, metrics=METRICS) -> dict:
    """Mean and standard error of each metric over users with at least one target; history excluded.
    ``metrics``: (name, function, k) triples."""
    return summarize(per_user(scores, fold_in, targets, metrics))


def tune_ease(split: StrongSplit, grid=(10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)):
    """EASE with its L2 weight chosen by validation NDCG@100 (never the test users)."""
    from feast_autofeat.models.ease import EASE
    from feast_autofeat.models.metrics import ndcg_at_k

    scored = []
    for l2 in grid:
        model = EASE(l2).fit(split.train)
        scored.append((float(ndcg_at_k(model.score(split.valid_in), split.valid_out, 100,
                                       exclude=split.valid_in).mean()), l2, model))
    best = max(scored, key=lambda t: t[0])
    return best[2], {"l2": best[1], "valid_ndcg@100": best[0], "grid": list(grid)}


def strong_generalization_table(split: StrongSplit, seed: int = 0, vae_overrides: dict | None = None) -> dict:
    """Popularity, EASE (tuned on validation) and Mult-VAE (early-stopped on validation) on one split."""
    from feast_autofeat.models.ease import Popularity
    from feast_autofeat.models.multvae import MultVAE

    rows = {}
    t = time.perf_counter()
    pop = Popularity().fit(split.train)
    rows["popularity"] = {**evaluate(pop.score(split.test_in), split.test_in, split.test_out),
                          "train_seconds": time.perf_counter() - t}
    t = time.perf_counter()
    ease, info = tune_ease(split)
    rows["ease"] = {**evaluate(ease.score(split.test_in), split.test_in, split.test_out),
                    "train_seconds": time.perf_counter() - t, **info}
    vae = MultVAE(seed=seed, **(vae_overrides or {})).fit(split.train, split.item_ids,
                                                          valid=(split.valid_in, split.valid_out))
    rows["multvae"] = {**evaluate(vae.score(split.test_in), split.test_in, split.test_out), **vae.metrics_}
    return rows


def next_period_activity(store, inter, refs: list[str], cutoffs, horizon_days: int = 14) -> pd.DataFrame:
    """A downstream task for tabular encoders: from a user's features ``refs`` as of a cutoff (point in time),
    predict whether they interact again within ``horizon_days`` (events of the interaction log ``inter``). One
    row per (cutoff, user already seen by then), with the user key as the log names it."""
    from feast_autofeat.feast.offline import read_events

    cutoffs = sorted(pd.Timestamp(c) for c in cutoffs)
    ev = read_events(store, inter, (cutoffs[-1] + pd.Timedelta(days=horizon_days)).to_pydatetime())
    rows = []
    for c in cutoffs:  # a handful of cutoffs; each is one vectorized pass over the events
        seen = ev.loc[ev.event_timestamp < c, "user_id"].unique()
        later = ev.loc[(ev.event_timestamp >= c) & (ev.event_timestamp < c + pd.Timedelta(days=horizon_days)),
                       "user_id"].unique()
        rows.append(pd.DataFrame({inter.user_key: seen, "event_timestamp": c, "label": np.isin(seen, later)}))
    entity = pd.concat(rows, ignore_index=True)
    return store.get_historical_features(entity_df=entity, features=refs).to_df()


def downstream_auc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test AUC of a ridge logistic regression on standardized inputs."""
    from feast_autofeat.models.metrics import auc, logistic_fit, logistic_score

    mu, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    w = logistic_fit((x_train - mu) / sd, y_train.astype(float), l2=1e-3)
    return auc(y_test, logistic_score(w, (x_test - mu) / sd))
